"""SIGTERM (what a preemption sends) and Ctrl-C on a two-process run: every process saves
the same step, prints one line and exits with code 75; the rerun resumes from that step."""

import signal
import socket

import pytest
from fault_runs import (
    Watched,
    complete_steps,
    env,
    logged_steps,
    resumed_from,
    train_cmd,
    wait_until,
)

from t5x_rationale.runtime.training_loop import PREEMPTED_EXIT_CODE


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def two_processes(run_dir, compile_cache, *extra):
    port = _free_port()
    return [
        Watched(
            train_cmd(
                "plain",
                run_dir,
                f"--coordinator_address=127.0.0.1:{port}",
                "--num_processes=2",
                f"--process_id={i}",
                *extra,
            ),
            env(compile_cache),
        )
        for i in range(2)
    ]


@pytest.mark.parametrize(
    "signum, targets",
    [
        pytest.param(signal.SIGTERM, (0, 1), id="sigterm-every-host", marks=pytest.mark.slow),
        pytest.param(signal.SIGTERM, (1,), id="sigterm-one-host", marks=pytest.mark.full_faults),
        pytest.param(signal.SIGINT, (0,), id="ctrl-c-one-host", marks=pytest.mark.full_faults),
    ],
)
def test_a_signal_saves_one_step_on_every_process_and_exits_75(
    tmp_path, compile_cache, signum, targets
):
    run_dir = tmp_path / "run"
    procs = two_processes(run_dir, compile_cache)
    assert wait_until(lambda: logged_steps(run_dir) >= 3, procs[0], timeout=300)
    for i in targets:
        procs[i].signal(signum)
    codes = [p.wait(300) for p in procs]
    outputs = [p.output for p in procs]
    assert codes == [PREEMPTED_EXIT_CODE] * 2, outputs
    stops = []
    for out in outputs:
        assert "Traceback" not in out, out[-3000:]
        lines = [ln for ln in out.splitlines() if "train: stopped at step " in ln]
        assert len(lines) == 1, out[-3000:]
        stops.append(int(lines[0].split("train: stopped at step ")[1].split()[0]))
    assert stops[0] == stops[1] and complete_steps(run_dir)[-1] == stops[0]
    reruns = two_processes(run_dir, compile_cache)  # source shards: the same host count
    assert [p.wait(300) for p in reruns] == [0, 0], [p.output[-3000:] for p in reruns]
    assert resumed_from(reruns[0].output).startswith(
        f"train: starting from {run_dir}/checkpoints/{stops[0]} at step {stops[0]} "
    )
