"""kill -9 at random moments of real runs of each kind (plain, KD with a teacher, Quiet-STaR,
QCRD): every rerun resumes from the last complete checkpoint and ends bit for bit equal to an
uninterrupted run (losses of every step, params, optimizer state, data position; for QCRD
also the lagged ring and the discriminator's params and optimizer state).

Trial 0 of each kind kills inside an asynchronous checkpoint write; the others at a random
moment (seeded by kind and trial): during start-up, or a random time after a random step.
Trial 0 of the QCRD kind runs in the test command: its run is the plain loop plus QCRD's
state. Plain runs are also killed with -9 in the test command by `test_star_kill.py` (while
fine-tuning) and restarted by the preemption and full-disk tests. `-m full_faults` runs
the rest.
"""

import random
import signal
import time

import pytest
from fault_runs import (
    Watched,
    assert_same_state,
    complete_steps,
    env,
    logged_steps,
    losses,
    once,
    resumed_from,
    run_ok,
    saved_state,
    saving_now,
    sigkill,
    steps_of,
    train_cmd,
    wait_until,
)

KINDS = ("plain", "kd", "quiet_star", "qcrd")
TRIALS = 10
# KD is the same loop with a teacher and Quiet-STaR the same loop with another model: the
# full count; QCRD's loop with its state (ring, discriminator, sampled negatives) is in the
# test command
IN_CI = {("qcrd", 0)}


def _trials():
    for kind in KINDS:
        for trial in range(TRIALS):
            mark = pytest.mark.slow if (kind, trial) in IN_CI else pytest.mark.full_faults
            yield pytest.param(kind, trial, marks=mark, id=f"{kind}-{trial}")


def _uninterrupted(kind, shared_dir, compile_cache):
    """The uninterrupted run of `kind`; the plain one's last checkpoint is the KD teacher."""
    teacher = None
    if kind == "kd":
        teacher = _uninterrupted("plain", shared_dir, compile_cache)[0] / "checkpoints"
    make = lambda path: run_ok(train_cmd(kind, path, teacher=teacher), env(compile_cache))  # noqa: E731
    return once(shared_dir, f"uninterrupted-{kind}", make), teacher


def _strike(trial: int, rng: random.Random, run_dir, watched: Watched, steps: int) -> str:
    """Waits for this trial's moment; returns what it was."""
    if trial == 0:
        after = rng.randrange(0, steps - 4)
        wait_until(lambda: logged_steps(run_dir) >= after and saving_now(run_dir), watched)
        return f"inside the asynchronous save after step >= {after}"
    if rng.random() < 0.2:
        delay = rng.uniform(0, 6)
        time.sleep(delay)
        return f"{delay:.2f} s after start (start-up)"
    after, delay = rng.randrange(0, steps), rng.uniform(0, 0.3)
    wait_until(lambda: logged_steps(run_dir) >= after, watched)
    time.sleep(delay)
    return f"{delay:.3f} s after step {after} was logged"


@pytest.mark.parametrize("kind, trial", list(_trials()))
def test_kill9_then_rerun_ends_bitwise_equal(kind, trial, tmp_path, shared_dir, compile_cache):
    reference, teacher = _uninterrupted(kind, shared_dir, compile_cache)
    run_dir = tmp_path / "run"
    cmd = train_cmd(kind, run_dir, teacher=teacher)
    watched = Watched(cmd, env(compile_cache))
    moment = _strike(trial, random.Random(f"{kind}-{trial}"), run_dir, watched, steps_of(kind))
    assert sigkill(watched), f"the run ended before the kill ({moment}): {watched.output[-2000:]}"
    assert watched.proc.returncode == -signal.SIGKILL
    intact = complete_steps(run_dir) if run_dir.exists() else []

    rerun = run_ok(cmd, env(compile_cache))
    source = f"{run_dir}/checkpoints/{intact[-1]}" if intact else "fresh init"
    assert resumed_from(rerun.stdout).startswith(f"train: starting from {source} "), moment
    print(f"TRIAL {kind}-{trial}: killed {moment}; the rerun started from {source}")
    assert losses(run_dir) == losses(reference), moment
    assert complete_steps(run_dir) == complete_steps(reference), moment
    steps = steps_of(kind)
    assert_same_state(saved_state(run_dir, steps), saved_state(reference, steps))
