"""A full disk (`RLIMIT_FSIZE` in the child: writing past the limit fails with EFBIG, as
ENOSPC would): the run stops at the first failed checkpoint with one error line and exit
code 74; the earlier checkpoints stay intact, and the rerun resumes from the newest."""

import sys

import pytest
from fault_runs import (
    SAVE_EVERY,
    STEPS,
    assert_same_state,
    complete_steps,
    env,
    resumed_from,
    run,
    run_ok,
    saved_state,
    train_cmd,
)

from t5x_rationale.data.quiet_stderr import is_tf_startup_notice, is_tokenizer_notice

# Above every small file a run writes (config, metrics, events), below the checkpoint's
# array file (the tiny T5's params and Adam moments: about 27 MB).
FILE_SIZE_LIMIT = 1 << 20


def _with_file_size_limit(cmd: list[str]) -> list[str]:
    """`cmd` run by a Python that first lowers its own RLIMIT_FSIZE (no fork in this
    multithreaded test process: the limit is set in the child, which then execs `cmd`)."""
    limit = (
        "import os, resource, sys; "
        f"resource.setrlimit(resource.RLIMIT_FSIZE, ({FILE_SIZE_LIMIT}, {FILE_SIZE_LIMIT})); "
        "os.execv(sys.argv[1], sys.argv[1:])"
    )
    return [sys.executable, "-c", limit, *cmd]


@pytest.mark.slow
def test_a_failed_checkpoint_write_stops_the_run_and_keeps_the_earlier_ones(
    tmp_path, compile_cache
):
    run_dir = tmp_path / "run"
    first = 2 * SAVE_EVERY
    run_ok(train_cmd("plain", run_dir, f"--gin.TRAIN_STEPS={first}"), env(compile_cache))
    before = saved_state(run_dir, first)

    # Without the compilation cache: its writes would meet the limit too.
    full = run(_with_file_size_limit(train_cmd("plain", run_dir)), env())
    assert full.returncode == 74, full.stdout[-2000:] + full.stderr[-3000:]
    errors = [ln for ln in full.stderr.splitlines() if "train: error:" in ln]
    assert len(errors) == 1, full.stderr[-3000:]
    assert f"the checkpoint of step {first + SAVE_EVERY} could not be written" in errors[0]
    assert (
        "File too large" in errors[0]
        and f"Intact checkpoints: [{SAVE_EVERY}, {first}]" in (errors[0])
    )
    for noise in ("Traceback", "Event loop is closed", "ERROR:absl"):
        assert noise not in full.stderr + full.stdout, full.stderr[-3000:]
    assert complete_steps(run_dir) == [SAVE_EVERY, first]
    assert_same_state(saved_state(run_dir, first), before)

    rerun = run_ok(train_cmd("plain", run_dir), env(compile_cache))
    assert resumed_from(rerun.stdout).startswith(
        f"train: starting from {run_dir}/checkpoints/{first} at step {first} of {STEPS}"
    )
    assert complete_steps(run_dir)[-1] == STEPS
    noise = [ln for ln in rerun.stderr.splitlines() if is_tf_startup_notice(ln)]
    assert not noise and not is_tokenizer_notice(rerun.stderr), rerun.stderr[-3000:]
