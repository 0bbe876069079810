"""The huge-page re-execution of the command-line entry points."""

import os
import subprocess
import sys

import pytest

from t5x_rationale.runtime import host_memory


def test_tunable_is_appended_to_existing_ones():
    assert host_memory.tunables_with_huge_pages("") == "glibc.malloc.hugetlb=1"
    assert (
        host_memory.tunables_with_huge_pages("glibc.malloc.arena_max=2")
        == "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"
    )


def test_switch_and_existing_tunable_stop_the_reexec():
    assert not host_memory.huge_pages_wanted({"T5XR_HUGE_PAGES": "0"})
    assert not host_memory.huge_pages_wanted({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"})
    assert host_memory.huge_pages_enabled({"GLIBC_TUNABLES": "x=1:glibc.malloc.hugetlb=1"})
    assert not host_memory.huge_pages_enabled({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"})
    assert not host_memory.huge_pages_enabled({})


_CHILD = """
import os, sys
from t5x_rationale.runtime import host_memory
print("before", os.getpid(), flush=True)
host_memory.reexec_with_huge_pages()
print("after", os.getpid(), os.environ.get("GLIBC_TUNABLES", ""), sys.argv[1:], flush=True)
"""


@pytest.mark.skipif(
    not host_memory.huge_pages_wanted({}), reason="needs Linux, glibc >= 2.35 and THP"
)
def test_reexec_keeps_pid_and_arguments_and_runs_once():
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", host_memory.SWITCH)}
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, "--flag", "value"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\n")
    before = [line for line in out if line.startswith("before")]
    after = [line for line in out if line.startswith("after")]
    assert len(before) == 2 and len(after) == 1  # the script ran again once, then went on
    pid = before[0].split()[1]
    assert before[1].split()[1] == pid and after[0].split()[1] == pid
    assert "glibc.malloc.hugetlb=1" in after[0] and after[0].endswith("['--flag', 'value']")


def test_reexec_is_off_with_the_switch():
    env = dict(os.environ, T5XR_HUGE_PAGES="0")
    out = subprocess.run(
        [sys.executable, "-c", _CHILD], env=env, capture_output=True, text=True, check=True
    ).stdout
    assert out.count("before") == 1 and out.count("after") == 1


def test_one_arena_reexec_runs_once_with_the_tunable():
    assert not host_memory.one_arena_wanted({"T5XR_ONE_ARENA": "0"})
    assert not host_memory.one_arena_wanted({"GLIBC_TUNABLES": "glibc.malloc.arena_max=4"})
    if not host_memory.one_arena_wanted({}):
        pytest.skip("needs Linux and glibc")
    child = _CHILD.replace("reexec_with_huge_pages", "reexec_with_one_malloc_arena")
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "T5XR_ONE_ARENA")}
    out = subprocess.run(
        [sys.executable, "-c", child], env=env, capture_output=True, text=True, check=True
    ).stdout
    assert out.count("before") == 2 and out.count("after") == 1
    assert "glibc.malloc.arena_max=1" in out.split("after")[1]
