"""A run killed with SIGKILL and restarted reaches bitwise the same state as an uninterrupted
run."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

SCRIPT = os.path.join(os.path.dirname(__file__), "train_script.py")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 8


def _cmd(out, checkpoint_dir, *extra):
    return [
        sys.executable,
        SCRIPT,
        "--preset",
        "decoder-tiny",
        "--mesh",
        "2x2x2",
        "--local_devices",
        "8",
        "--steps",
        str(STEPS),
        "--optimizer",
        "adamw",
        "--out",
        str(out),
        "--checkpoint_dir",
        str(checkpoint_dir),
        *extra,
    ]


def _env():
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _kill_after_step(cmd, step, timeout=300):
    """Starts `cmd`, waits until it prints 'step {step} ', then SIGKILLs it."""
    proc = subprocess.Popen(
        cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    deadline = time.time() + timeout
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if line.startswith(f"step {step} "):
            proc.send_signal(signal.SIGKILL)
            break
        assert time.time() < deadline, "".join(seen[-50:])
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "".join(seen[-50:])
    return "".join(seen)


@pytest.mark.slow
def test_sigkill_and_resume_is_bitwise_identical(tmp_path):
    straight = subprocess.run(
        _cmd(tmp_path / "straight.npz", tmp_path / "ckpt_straight"),
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert straight.returncode == 0, straight.stdout[-2000:] + straight.stderr[-3000:]

    # The run sleeps after each step so the kill lands mid-run, possibly mid-save.
    _kill_after_step(
        _cmd(tmp_path / "killed.npz", tmp_path / "ckpt", "--sleep_after_step", "0.5"), step=5
    )
    assert not (tmp_path / "killed.npz").exists()
    resumed = subprocess.run(
        _cmd(tmp_path / "resumed.npz", tmp_path / "ckpt"),
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-3000:]
    start = [line for line in resumed.stdout.splitlines() if line.startswith("start:")][0]
    resumed_from = int(start.rsplit(" ", 1)[1])
    assert 3 <= resumed_from <= 5, start  # resumed from a checkpoint, not from scratch

    want, got = np.load(tmp_path / "straight.npz"), np.load(tmp_path / "resumed.npz")
    params = [k for k in want.files if k.startswith("param:")]
    assert params and sorted(params) == sorted(k for k in got.files if k.startswith("param:"))
    for key in params:
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)
    for step in range(resumed_from + 1, STEPS + 1):
        assert got[f"loss:{step}"] == want[f"loss:{step}"]
