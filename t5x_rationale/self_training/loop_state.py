"""The STaR loop's bookkeeping: each iteration's directory, its finished phases (a small
state file rewritten atomically after each phase) and its fine-tuning steps."""

from __future__ import annotations

import json
import os
from typing import Optional

from t5x_rationale.runtime.run_files import write_text_atomic

# In order. `generate` and `rationalize` resume at their first unfinished shard, `train` at
# its last checkpoint; `select` and `evaluate` are rerun whole.
PHASES = ("generate", "rationalize", "select", "train", "evaluate")
STATE_FILE = "state.json"


def iteration_steps(base_steps: int, iteration: int, growth: float = 1.2) -> int:
    """Fine-tuning steps of iteration n (from 1): `base_steps * growth ** (n - 1)`, rounded."""
    if iteration < 1:
        raise ValueError(f"iterations count from 1, got {iteration}")
    if base_steps < 1:
        raise ValueError(f"base_steps must be positive, got {base_steps}")
    return max(1, round(base_steps * growth ** (iteration - 1)))


def iteration_dir(out_dir: str, iteration: int) -> str:
    return os.path.join(out_dir, f"iter-{iteration}")


class IterationState:
    """The finished phases of one iteration, read from and written to its `state.json`."""

    def __init__(self, directory: str):
        self.directory = directory
        self.path = os.path.join(directory, STATE_FILE)
        self.finished: list[str] = []
        self.seconds: dict[str, float] = {}
        if os.path.exists(self.path):
            with open(self.path) as f:
                saved = json.load(f)
            self.finished, self.seconds = list(saved["finished"]), dict(saved["seconds"])
        unknown = [p for p in self.finished if p not in PHASES]
        if unknown:
            raise ValueError(f"{self.path}: unknown phases {unknown} (expected {PHASES})")

    def done(self, phase: str) -> bool:
        return phase in self.finished

    def finish(self, phase: str, seconds: float) -> None:
        """Marks `phase` finished, with the seconds this run spent on it, atomically."""
        if phase not in PHASES:
            raise ValueError(f"unknown phase {phase!r}")
        if not self.done(phase):
            self.finished.append(phase)
        self.seconds[phase] = round(self.seconds.get(phase, 0.0) + seconds, 3)
        os.makedirs(self.directory, exist_ok=True)
        body = {"finished": self.finished, "seconds": self.seconds}
        write_text_atomic(self.path, json.dumps(body, indent=1) + "\n")

    @property
    def complete(self) -> bool:
        return all(self.done(p) for p in PHASES)


def final_checkpoint(out_dir: str, iteration: int, steps: int) -> str:
    """The last checkpoint of iteration n's fine-tuning (model n)."""
    return os.path.join(iteration_dir(out_dir, iteration), "train", "checkpoints", str(steps))


def model_for_generation(out_dir: str, iteration: int, initial: Optional[str], steps_of) -> str:
    """The checkpoint that generates in iteration n: model n - 1 (the initial one for n = 1)."""
    if iteration > 1:
        return final_checkpoint(out_dir, iteration - 1, steps_of(iteration - 1))
    if initial is None:
        raise ValueError("STaR's first iteration needs a checkpoint to generate with")
    return initial
