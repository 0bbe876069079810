"""The host-side training loop: steps, metrics, NaN stop rule, checkpoints, preemption."""

from __future__ import annotations

import logging
import os
import signal
import threading
from typing import Callable, Iterator, Optional

import jax
from jax.experimental import multihost_utils

from t5x_rationale.runtime.checkpoints import Checkpointer
from t5x_rationale.runtime.trainer import Throughput, Trainer, TrainState, host_metrics

log = logging.getLogger(__name__)

MetricsCallback = Callable[[int, dict], None]


class Preempted(RuntimeError):
    """The run saved a checkpoint and stopped because it was asked to (SIGTERM, Ctrl-C or a
    multi-host preemption notice); the entry point exits with `PREEMPTED_EXIT_CODE`."""


# EX_TEMPFAIL: "stopped, not failed; run the same command again to resume". A scheduler or a
# retry loop tells it from success (0), a user error (2) and a crash (1).
PREEMPTED_EXIT_CODE = 75


class _StopFlag:
    """Ctrl-C (SIGINT) or SIGTERM (a preemption): the loop saves and stops after the current
    step. A second Ctrl-C stops at once (KeyboardInterrupt).

    With several processes every one must stop at the same step, so the decision is JAX's
    preemption service's (`reached_preemption`): SIGTERM is left to its notifier, and a
    Ctrl-C is handed to it as a SIGTERM. One process alone decides by itself (`event`).
    """

    def __init__(self, coordinated: bool):
        self.coordinated = coordinated
        self.event = threading.Event()
        self._previous = {}

    def _handle(self, signum, frame) -> None:
        if self.event.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.event.set()
        name = signal.Signals(signum).name
        print(f"\n{name}: saving a checkpoint, then stopping", flush=True)
        if self.coordinated:
            os.kill(os.getpid(), signal.SIGTERM)  # to JAX's notifier: all processes agree

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            signals = (signal.SIGINT,) if self.coordinated else (signal.SIGINT, signal.SIGTERM)
            self._previous = {s: signal.signal(s, self._handle) for s in signals}
        return self

    def __exit__(self, *exc):
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)

    def reached(self, step: int, checkpointer: Optional[Checkpointer]) -> bool:
        """Whether to save and stop after `step` (the same answer on every process)."""
        if not self.coordinated:
            return self.event.is_set() or (
                checkpointer is not None and checkpointer.reached_preemption(step)
            )
        return multihost_utils.reached_preemption_sync_point(step)


def train_loop(
    trainer: Trainer,
    state: TrainState,
    data: Iterator[dict],
    *,
    num_steps: int,
    checkpointer: Optional[Checkpointer] = None,
    throughput: Optional[Throughput] = None,
    on_metrics: Optional[MetricsCallback] = None,
    prepare: Optional[Callable[[TrainState, dict], dict]] = None,
) -> TrainState:
    """Trains until `state.step == num_steps`, starting wherever `state` and `data` are.

    `data` yields host-local NumPy batches and has `get_state()` (saved with every
    checkpoint); `prepare(state, host_batch)` may add to each batch what the state decides
    (QCRD's sampled negatives). The last step is always checkpointed; a SIGTERM or a
    multi-host preemption notice saves the current step (when there is a checkpointer) and
    raises `Preempted`.
    """
    partitioner = trainer.partitioner
    step = int(state.step)
    if throughput is not None:
        throughput.start()
    with _StopFlag(coordinated=jax.process_count() > 1) as stop:
        while step < num_steps:
            host_batch = next(data)
            if prepare is not None:
                host_batch = prepare(state, host_batch)
            batch = partitioner.host_batch_to_global(host_batch)
            state, metrics = trainer.train_step(state, batch)
            step += 1
            values = host_metrics(metrics)
            if throughput is not None:
                values.update(throughput.update())
            if on_metrics is not None:
                on_metrics(step, values)
            trainer.check_finite(values)
            preempted = stop.reached(step, checkpointer)
            if checkpointer is not None:
                checkpointer.save(
                    step, state, data.get_state(), force=preempted or step == num_steps
                )
                checkpointer.check_written()
                if preempted:
                    checkpointer.wait()
                    raise Preempted(
                        f"stopped at step {step} after saving a checkpoint in "
                        f"{checkpointer.directory}; run the same command again to resume"
                    )
            if preempted:
                raise Preempted(f"stopped at step {step} (no checkpointer: nothing saved)")
    if checkpointer is not None:
        checkpointer.wait()
    return state
