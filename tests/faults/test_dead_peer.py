"""A two-process run whose peer is killed (kill -9): the other process exits with an error
within a bounded time instead of hanging. The bound is `--heartbeat_timeout_s`: the
coordination service declares a process dead after that long without a heartbeat."""

import time

import pytest
from fault_runs import logged_steps, sigkill, wait_until
from test_preemption import two_processes

HEARTBEAT_S = 10
# Detection takes up to the heartbeat timeout; then the survivor's error path and exit.
BOUND_S = HEARTBEAT_S + 30


@pytest.mark.parametrize(
    "killed",
    [
        pytest.param(1, id="peer-killed", marks=pytest.mark.slow),
        pytest.param(0, id="coordinator-killed", marks=pytest.mark.full_faults),
    ],
)
def test_the_survivor_exits_with_an_error_within_the_heartbeat_bound(
    tmp_path, compile_cache, killed
):
    run_dir = tmp_path / "run"
    procs = two_processes(run_dir, compile_cache, f"--heartbeat_timeout_s={HEARTBEAT_S}")
    assert wait_until(lambda: logged_steps(run_dir) >= 2, procs[0], timeout=300)
    start = time.time()
    assert sigkill(procs[killed])
    survivor = procs[1 - killed]
    code = survivor.wait(timeout=BOUND_S + 60)
    elapsed = time.time() - start
    last = [ln for ln in survivor.output.splitlines() if ln.strip()][-3:]
    print(f"survivor (process {1 - killed}) exited {code} after {elapsed:.1f} s:", *last, sep="\n")
    assert code != 0, survivor.output[-3000:]
    assert "JAX distributed service detected fatal errors" in survivor.output, survivor.output[
        -3000:
    ]
    assert elapsed < BOUND_S, survivor.output[-3000:]
