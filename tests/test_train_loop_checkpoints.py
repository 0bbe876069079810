"""The training loop's checkpointing: saves, SIGTERM preemption and a bitwise-identical resume."""

from __future__ import annotations

import signal

import jax
import pytest
from checkpoint_setup import EXAMPLE, assert_bitwise_equal, make_data, no_init, saved_checkpoints

from t5x_rationale.runtime.checkpoints import Checkpointer
from t5x_rationale.runtime.training_loop import Preempted, train_loop


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    return saved_checkpoints(tmp_path_factory)


def _fresh_state(saved):
    """The step-0 state on the save mesh, without compiling init again."""
    _, _, shardings, _ = saved.trainer.layout(EXAMPLE)
    return jax.device_put(saved.initial, shardings)


def _recorder(losses: dict, signal_at=None, signum=signal.SIGTERM):
    def on_metrics(step, metrics):
        losses[step] = metrics["loss"]
        if step == signal_at:
            signal.raise_signal(signum)

    return on_metrics


@pytest.fixture(params=[signal.SIGTERM, signal.SIGINT], ids=["sigterm", "ctrl-c"])
def signal_guard(request):
    """Catches the signal if the loop fails to install its own handler (instead of killing
    pytest)."""
    caught = []
    guard = lambda *_: caught.append(1)  # noqa: E731
    previous = signal.signal(request.param, guard)
    yield request.param, guard, caught
    signal.signal(request.param, previous)


def test_train_loop_preemption_and_resume(saved, tmp_path, signal_guard):
    trainer, num_steps = saved.trainer, 4

    # Uninterrupted run; save_every=3 so the final step 4 is only saved because it is last.
    full_losses = {}
    full_run = tmp_path / "full"
    checkpointer = Checkpointer(str(full_run), save_every=3, keep=None)
    final = train_loop(
        trainer,
        _fresh_state(saved),
        make_data(),
        num_steps=num_steps,
        checkpointer=checkpointer,
        on_metrics=_recorder(full_losses),
    )
    final_host = jax.device_get(final)
    assert sorted(full_losses) == [1, 2, 3, 4]
    assert full_losses[1] == saved.losses[1] and full_losses[2] == saved.losses[2]
    assert int(final_host.step) == num_steps
    assert checkpointer.latest_step == 4
    assert {3, 4} <= set(checkpointer.all_steps()) and 2 not in checkpointer.all_steps()
    restored, data_state = checkpointer.restore(4, trainer.abstract_state(EXAMPLE))
    assert data_state == {"position": 4, "seed": 1}
    assert_bitwise_equal(restored, final_host)
    # Step 3 was saved asynchronously and its state then donated to step 4: the checkpoint
    # must still hold the step-3 state (the fixture computed the same 3 steps by hand).
    restored, data_state = checkpointer.restore(3, trainer.abstract_state(EXAMPLE))
    assert data_state == saved.data3
    assert_bitwise_equal(restored, saved.host3)
    checkpointer.close()

    # Interrupted run: SIGTERM or Ctrl-C during step 2 saves step 2 and raises Preempted.
    signum, guard, caught = signal_guard
    run = tmp_path / "preempted"
    losses = {}
    checkpointer = Checkpointer(str(run), save_every=100, keep=None)
    with pytest.raises(Preempted, match="step 2"):
        train_loop(
            trainer,
            _fresh_state(saved),
            make_data(),
            num_steps=num_steps,
            checkpointer=checkpointer,
            on_metrics=_recorder(losses, signal_at=2, signum=signum),
        )
    assert caught == [], "the signal reached the previous handler: the loop did not catch it"
    assert signal.getsignal(signum) is guard, "the loop must restore the previous handler"
    assert sorted(losses) == [1, 2]
    assert checkpointer.latest_step == 2
    assert not {3, 4} & set(checkpointer.all_steps())
    checkpointer.close()

    # Restart from the run directory and finish.
    checkpointer = Checkpointer(str(run), save_every=100, keep=None)
    state, data_state, source = checkpointer.restore_or_init(
        trainer.abstract_state(EXAMPLE), no_init
    )
    assert source == f"{run}/2" and data_state == {"position": 2, "seed": 1}
    assert int(state.step) == 2
    data = make_data()
    data.set_state(data_state)
    resumed_losses = {}
    resumed = train_loop(
        trainer,
        state,
        data,
        num_steps=num_steps,
        checkpointer=checkpointer,
        on_metrics=_recorder(resumed_losses),
    )
    assert sorted(resumed_losses) == [3, 4]
    for step in (1, 2):
        assert losses[step] == full_losses[step], step
    for step in (3, 4):
        assert resumed_losses[step] == full_losses[step], (
            step,
            resumed_losses[step],
            full_losses[step],
        )
    assert_bitwise_equal(resumed, final_host)
    assert checkpointer.latest_step == 4
    checkpointer.close()


def test_train_loop_without_work_still_waits_and_returns(saved, tmp_path):
    """A run restored at num_steps does no steps and writes nothing."""
    run = tmp_path / "done"
    checkpointer = Checkpointer(str(run), save_every=1)
    state = _fresh_state(saved)
    out = train_loop(saved.trainer, state, make_data(), num_steps=0, checkpointer=checkpointer)
    assert out is state
    assert checkpointer.all_steps() == []
    checkpointer.close()


def test_train_loop_signal_without_checkpointer_stops(saved, signal_guard):
    signum, guard, caught = signal_guard
    losses = {}
    try:
        train_loop(
            saved.trainer,
            _fresh_state(saved),
            make_data(),
            num_steps=3,
            on_metrics=_recorder(losses, signal_at=1, signum=signum),
        )
    except Preempted:
        pass
    assert caught == []
    assert signal.getsignal(signum) is guard
    assert sorted(losses) == [1], f"the signal at step 1 was ignored; steps run: {sorted(losses)}"
