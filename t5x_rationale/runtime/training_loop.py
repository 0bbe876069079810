"""The host-side training loop: steps, metrics, NaN stop rule, checkpoints, preemption."""

from __future__ import annotations

import logging
import signal
import threading
from typing import Callable, Iterator, Optional

from t5x_rationale.runtime.checkpoints import Checkpointer
from t5x_rationale.runtime.trainer import Throughput, Trainer, TrainState, host_metrics

log = logging.getLogger(__name__)

MetricsCallback = Callable[[int, dict], None]


class Preempted(RuntimeError):
    """The run saved a checkpoint and stopped because it was asked to (SIGTERM/preemption)."""


class _StopFlag:
    """Set by SIGTERM in the main thread; the loop saves and stops at the next step."""

    def __init__(self):
        self.event = threading.Event()
        self._previous = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, lambda *_: self.event.set())
        return self

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def train_loop(
    trainer: Trainer,
    state: TrainState,
    data: Iterator[dict],
    *,
    num_steps: int,
    checkpointer: Optional[Checkpointer] = None,
    throughput: Optional[Throughput] = None,
    on_metrics: Optional[MetricsCallback] = None,
) -> TrainState:
    """Trains until `state.step == num_steps`, starting wherever `state` and `data` are.

    `data` yields host-local NumPy batches and has `get_state()` (saved with every
    checkpoint). The last step is always checkpointed; a SIGTERM or a multi-host preemption
    notice saves the current step (when there is a checkpointer) and raises `Preempted`.
    """
    partitioner = trainer.partitioner
    step = int(state.step)
    if throughput is not None:
        throughput.start()
    with _StopFlag() as stop:
        while step < num_steps:
            batch = partitioner.host_batch_to_global(next(data))
            state, metrics = trainer.train_step(state, batch)
            step += 1
            values = host_metrics(metrics)
            if throughput is not None:
                values.update(throughput.update())
            if on_metrics is not None:
                on_metrics(step, values)
            trainer.check_finite(values)
            preempted = stop.event.is_set()
            if checkpointer is not None:
                preempted = preempted or checkpointer.reached_preemption(step)
                checkpointer.save(
                    step, state, data.get_state(), force=preempted or step == num_steps
                )
                if preempted:
                    checkpointer.wait()
                    raise Preempted(f"stopped at step {step} after saving a checkpoint")
            if preempted:
                raise Preempted(f"stopped at step {step} (no checkpointer: nothing saved)")
    if checkpointer is not None:
        checkpointer.wait()
    return state
