"""Training metrics to a JSONL file, TensorBoard event files and a console progress line.

Only process 0 writes. `metrics.jsonl` gets one object per logged step (appended, so a
resumed run continues the same file; rows past the resumed step, which the run replays, and
a row cut short by a kill are dropped first); TensorBoard events go to `run_dir/tensorboard`
(TensorBoard itself discards the events past a step that a resumed run writes again).
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Optional, TextIO

import jax

from t5x_rationale.runtime.run_files import write_text_atomic


class MetricsWriter:
    """Writes every `log_every`-th step's metrics and keeps a one-line console progress bar.

    Args:
      run_dir: the run directory (must exist).
      total_steps: for the progress bar.
      log_every: write JSONL/TensorBoard rows every this many steps (and the last step).
      resume_step: the step the run starts from; earlier rows past it are dropped.
      stream: console stream (None: stderr); `console=False` silences it.
    """

    def __init__(
        self,
        run_dir: str,
        *,
        total_steps: int,
        log_every: int = 10,
        console: bool = True,
        stream: Optional[TextIO] = None,
        tensorboard: bool = True,
        resume_step: int = 0,
    ):
        self.active = jax.process_index() == 0
        self.total_steps, self.log_every = total_steps, max(1, log_every)
        self.console = console and self.active
        self.stream = stream or sys.stderr
        self._jsonl = self._tb = None
        self._start = time.perf_counter()
        if self.active:
            path = os.path.join(run_dir, "metrics.jsonl")
            _drop_rows_after(path, resume_step)
            self._jsonl = open(path, "a", encoding="utf-8")
            if tensorboard:
                from tensorboardX import SummaryWriter

                self._tb = SummaryWriter(os.path.join(run_dir, "tensorboard"))

    def __call__(self, step: int, metrics: dict[str, float]) -> None:
        if not self.active:
            return
        if step % self.log_every == 0 or step == self.total_steps:
            self._jsonl.write(json.dumps({"step": step, **metrics}, sort_keys=True) + "\n")
            self._jsonl.flush()
            if self._tb is not None:
                for name, value in metrics.items():
                    self._tb.add_scalar(name, value, step)
        if self.console:
            self._progress(step, metrics)

    def _progress(self, step: int, metrics: dict[str, float]) -> None:
        width = 30
        done = int(width * step / max(self.total_steps, 1))
        parts = [
            f"\r[{'#' * done}{'.' * (width - done)}] step {step}/{self.total_steps}",
            f"loss {metrics.get('loss', float('nan')):.4f}",
        ]
        if "tokens_per_s" in metrics:
            parts.append(f"{metrics['tokens_per_s']:,.0f} tok/s")
        if "mfu" in metrics:
            parts.append(f"MFU {100 * metrics['mfu']:.0f}%")
        parts.append(f"{time.perf_counter() - self._start:.0f}s")
        self.stream.write("  ".join(parts) + ("\n" if step == self.total_steps else ""))
        self.stream.flush()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._jsonl is not None:
            self._jsonl.close()
        if self._tb is not None:
            self._tb.close()
        if self.console:
            self.stream.write("\n")
            self.stream.flush()


def _drop_rows_after(path: str, step: int) -> None:
    """Rewrites `path` without the rows past `step` and without a torn (unparsable) row."""
    if not os.path.isfile(path):
        return
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    kept = []
    for line in lines:
        try:
            if json.loads(line)["step"] <= step:
                kept.append(line)
        except (ValueError, KeyError, TypeError):
            continue
    if len(kept) != len(lines):
        write_text_atomic(path, "".join(line + "\n" for line in kept))
