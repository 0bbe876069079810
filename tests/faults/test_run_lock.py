"""One run per run directory: the lock (released when its holder is killed) and the check
that a resumed run keeps the config its checkpoints were trained with."""

import os
import signal
import subprocess
import sys
import time

import pytest

from t5x_rationale.runtime.run_lock import (
    ConfigChangedError,
    RunDirectoryInUseError,
    RunLock,
    check_config_unchanged,
)

CONFIG = """# Macros:
TRAIN_STEPS = 100
RUN_DIR = '/tmp/run'

train.num_steps = %TRAIN_STEPS
OptimizerConfig.learning_rate = 0.001
OptimizerConfig.total_steps = 1000
"""


def test_a_second_holder_is_refused_naming_the_first(tmp_path):
    with RunLock(str(tmp_path)):
        with pytest.raises(RunDirectoryInUseError, match=f"pid {os.getpid()} on "):
            with RunLock(str(tmp_path)):
                pass
    with RunLock(str(tmp_path)):  # released on exit
        pass


def test_a_killed_holder_leaves_no_stuck_lock(tmp_path):
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\n"
            "from t5x_rationale.runtime.run_lock import RunLock\n"
            f"with RunLock({str(tmp_path)!r}):\n"
            "    print('held', flush=True)\n"
            "    time.sleep(600)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunDirectoryInUseError, match=f"pid {holder.pid} "):
            with RunLock(str(tmp_path)):
                pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    deadline = time.time() + 10
    while True:  # the OS releases a dead process's flock; nothing to clean up
        try:
            with RunLock(str(tmp_path)):
                break
        except RunDirectoryInUseError:
            assert time.time() < deadline, "the killed holder's lock was not released"
            time.sleep(0.1)


def test_the_step_count_may_change_on_resume(tmp_path):
    (tmp_path / "config.gin").write_text(CONFIG)
    longer = CONFIG.replace("TRAIN_STEPS = 100", "TRAIN_STEPS = 300")
    check_config_unchanged(str(tmp_path), longer, step=100)
    check_config_unchanged(str(tmp_path), "# a comment\n" + CONFIG, step=100)


def test_another_config_stops_with_the_difference(tmp_path):
    (tmp_path / "config.gin").write_text(CONFIG)
    changed = CONFIG.replace("learning_rate = 0.001", "learning_rate = 0.01")
    with pytest.raises(ConfigChangedError, match="step 100") as error:
        check_config_unchanged(str(tmp_path), changed, step=100)
    message = str(error.value)
    assert "-OptimizerConfig.learning_rate = 0.001" in message
    assert "+OptimizerConfig.learning_rate = 0.01" in message
    assert "total_steps" not in message and "allow_config_change" in message
    schedule = CONFIG.replace("total_steps = 1000", "total_steps = 2000")
    with pytest.raises(ConfigChangedError, match="total_steps"):  # not the step count
        check_config_unchanged(str(tmp_path), schedule, step=100)


def test_allowed_change_keeps_the_old_config(tmp_path):
    (tmp_path / "config.gin").write_text(CONFIG)
    changed = CONFIG.replace("learning_rate = 0.001", "learning_rate = 0.01")
    check_config_unchanged(str(tmp_path), changed, step=100, allow_change=True)
    assert (tmp_path / "config-before-step-100.gin").read_text() == CONFIG
    assert not (tmp_path / "config.gin").exists()  # train writes the new one next
