"""QCRD's training settings (bound by gin as `@QcrdSettings()`)."""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping


@dataclasses.dataclass(frozen=True)
class QcrdSettings:
    """What QCRD adds to a step-by-step run: the candidate stream, the lagged ring, the
    self-adversarial sampler and the online discriminator.

    Attributes:
      candidate_task: the `{name}_contrastive` task (question, positives, negatives, label).
      candidate_lengths: its feature lengths, e.g. `{"inputs": 128, "positives": 128,
        "negatives": 128, "targets": 16}` (positives and negatives equal, and sampled
        negatives get that length; targets is the label).
      num_positives, num_negatives: teacher candidate slots per question.
      lag: K, how many steps behind the params that sample negatives are (the ring's size).
      sample_every: N; every N-th step samples `num_samples` rationales per question from the
        params of `lag` steps earlier (0: never).
      num_samples: sampled slots per question (kept when their answer disagrees with the
        label; the rest are masked out).
      temperature: the sampler's temperature.
      discriminator_pretrain_steps: D's updates on teacher positives vs negatives before the
        student's first step (on its own pass over the candidate task).
      discriminator_every: M; D takes one step on the step's candidates every M-th step
        (0: never after pretraining).
      discriminator_learning_rate: D's Adam learning rate.
      discriminator_weights: whether D's scores weight the contrastive terms (False: all 1,
        D still trains; the ablation).
      discriminator: the D module (`@discriminator_model()` in gin).
    """

    candidate_task: str
    candidate_lengths: Mapping[str, int]
    num_positives: int = 3
    num_negatives: int = 2
    lag: int = 5
    sample_every: int = 10
    num_samples: int = 2
    temperature: float = 1.5
    discriminator_pretrain_steps: int = 100
    discriminator_every: int = 10
    discriminator_learning_rate: float = 1e-4
    discriminator_weights: bool = True
    discriminator: Any = None

    def __post_init__(self):
        for name in ("lag", "num_positives"):
            if getattr(self, name) < 1:
                raise ValueError(f"QcrdSettings.{name} must be >= 1, got {getattr(self, name)}")
        for name in (
            "num_negatives",
            "sample_every",
            "num_samples",
            "discriminator_pretrain_steps",
            "discriminator_every",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"QcrdSettings.{name} must be >= 0, got {getattr(self, name)}")
        if self.sample_every and not self.num_samples:
            raise ValueError("QcrdSettings.sample_every > 0 needs num_samples >= 1")
        if not self.temperature > 0:
            raise ValueError(f"QcrdSettings.temperature must be > 0, got {self.temperature}")
        lengths = dict(self.candidate_lengths)
        if set(lengths) != {"inputs", "positives", "negatives", "targets"}:
            raise ValueError(
                "QcrdSettings.candidate_lengths needs exactly inputs, positives, negatives and "
                f"targets (the label), got {sorted(lengths)}"
            )
        if self.discriminator is None:
            raise ValueError("QcrdSettings.discriminator is required (@discriminator_model())")
        object.__setattr__(self, "candidate_lengths", lengths)

    @property
    def teacher_slots(self) -> int:
        return self.num_positives + self.num_negatives

    @property
    def sampled_slots(self) -> int:
        return self.num_samples if self.sample_every else 0
