"""Transparent huge pages for host memory, so XLA's per-step buffers do not fault page by page.

XLA on CPU allocates each execution's temporary buffer (3 GB for a t5-small train step) and
its kernels' scratch with malloc, and glibc maps blocks that large fresh from the kernel every
time. Every 4 KiB page then faults on first touch: about a million faults and 1.3 s of kernel
time per t5-small step on two cores, a tenth of the step. glibc's `hugetlb` tunable (2.35+)
makes malloc advise transparent huge pages for those mappings, which cuts the faults 40x.

Tunables are read when a process starts, so the command-line entry points call
`reexec_with_huge_pages()` first thing under `__main__`: it re-executes the same command once
with the tunable set (same pid, same arguments; the imports run a second time). Set
T5XR_HUGE_PAGES=0 to turn it off. Not Linux, not glibc, THP disabled or the tunable already
given: nothing happens.

`import_hf` re-executes itself the same way with `glibc.malloc.arena_max=1` instead
(`reexec_with_one_malloc_arena`, T5XR_ONE_ARENA=0 turns it off). Orbax's write runs on
TensorStore's threads, and glibc gives each thread its own arena, which keeps what the thread
freed for its own next allocations: importing a 1.47B-param float32 model (largest tensor
262 MB) peaked 0.91 GB above its params with an arena per thread, 0.37 GB with one
(`bench_import`), and the write was no slower.
"""

from __future__ import annotations

import os
import platform
import sys

TUNABLE = "glibc.malloc.hugetlb"
SETTING = f"{TUNABLE}=1"
SWITCH = "T5XR_HUGE_PAGES"
THP_SETTING = "/sys/kernel/mm/transparent_hugepage/enabled"
ARENA_TUNABLE = "glibc.malloc.arena_max"
ONE_ARENA = f"{ARENA_TUNABLE}=1"
ARENA_SWITCH = "T5XR_ONE_ARENA"


def _glibc_supports_hugetlb() -> bool:
    name, version = platform.libc_ver()
    if name != "glibc":
        return False
    try:
        major, minor = (int(part) for part in version.split(".")[:2])
    except ValueError:
        return False
    return (major, minor) >= (2, 35)


def _thp_available() -> bool:
    try:
        with open(THP_SETTING) as f:
            return "[never]" not in f.read()
    except OSError:
        return False


def huge_pages_enabled(environ=os.environ) -> bool:
    """Whether malloc in this process was started with the tunable."""
    return SETTING in environ.get("GLIBC_TUNABLES", "").split(":")


def huge_pages_wanted(environ=os.environ) -> bool:
    """Whether this process should re-execute itself with the tunable set."""
    if environ.get(SWITCH, "1") == "0" or TUNABLE in environ.get("GLIBC_TUNABLES", ""):
        return False
    return sys.platform == "linux" and _glibc_supports_hugetlb() and _thp_available()


def tunables_with_huge_pages(current: str) -> str:
    """GLIBC_TUNABLES with `glibc.malloc.hugetlb=1` appended to whatever was set."""
    return ":".join(part for part in (current, SETTING) if part)


def reexec_with_huge_pages() -> None:
    """Re-execute this command once with huge pages for malloc (before any XLA work)."""
    if huge_pages_wanted():
        _reexec_with(SETTING, SWITCH)


def one_arena_wanted(environ=os.environ) -> bool:
    """Whether this process should re-execute itself with one malloc arena."""
    if environ.get(ARENA_SWITCH, "1") == "0" or ARENA_TUNABLE in environ.get("GLIBC_TUNABLES", ""):
        return False
    return sys.platform == "linux" and platform.libc_ver()[0] == "glibc"


def reexec_with_one_malloc_arena() -> None:
    """Re-execute this command once with one malloc arena for all threads."""
    if one_arena_wanted():
        _reexec_with(ONE_ARENA, ARENA_SWITCH)


def _reexec_with(setting: str, switch: str) -> None:
    env = dict(os.environ)
    env["GLIBC_TUNABLES"] = ":".join(p for p in (env.get("GLIBC_TUNABLES", ""), setting) if p)
    env[switch] = "0"  # the re-executed process must not do it again
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, sys.orig_argv, env)
