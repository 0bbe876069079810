"""Optimizers (AdamW, Adafactor) with learning-rate schedules and gradient clipping."""

from __future__ import annotations

import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp
import optax

OPTIMIZERS = ("adamw", "adafactor", "sgd")
SCHEDULES = ("constant", "cosine", "linear", "rsqrt")


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """Optimizer and schedule settings.

    Schedules: linear warmup from 0 over `warmup_steps`, then `constant`, `cosine` or
    `linear` decay to `end_lr_fraction * learning_rate` at `total_steps`, or T5's `rsqrt`
    (lr * sqrt(warmup / step) after warmup). Weight decay (decoupled) applies to params named
    kernel / embedding / rel_embedding, not to norm scales. AdamW multiplies it by the
    learning rate; Adafactor applies it unscaled (T5X convention).
    """

    name: str = "adamw"
    learning_rate: float = 1e-3
    schedule: str = "constant"
    warmup_steps: int = 0
    total_steps: Optional[int] = None
    end_lr_fraction: float = 0.0
    weight_decay: float = 0.0
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    clip_grad_norm: Optional[float] = 1.0

    def __post_init__(self):
        if self.name not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.name!r}; expected one of {OPTIMIZERS}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.schedule!r}; expected one of {SCHEDULES}")
        if self.learning_rate <= 0:
            raise ValueError(f"learning_rate must be positive, got {self.learning_rate}")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.schedule in ("cosine", "linear") and not self.total_steps:
            raise ValueError(f"schedule {self.schedule!r} needs total_steps")
        if self.total_steps is not None and self.total_steps <= self.warmup_steps:
            raise ValueError(
                f"total_steps ({self.total_steps}) must exceed warmup_steps ({self.warmup_steps})"
            )
        if self.clip_grad_norm is not None and self.clip_grad_norm <= 0:
            raise ValueError(f"clip_grad_norm must be positive or None, got {self.clip_grad_norm}")


def make_schedule(c: OptimizerConfig) -> optax.Schedule:
    """The learning rate as a function of the (0-based) step."""
    peak, warm = c.learning_rate, c.warmup_steps
    if c.schedule == "rsqrt":

        def rsqrt(step):
            step = jnp.asarray(step, jnp.float32)
            warmup = peak * step / max(warm, 1)
            decay = peak * jnp.sqrt(max(warm, 1) / jnp.maximum(step, 1.0))
            return jnp.where(step < warm, warmup, decay)

        return rsqrt
    if c.schedule == "constant":
        after = optax.constant_schedule(peak)
    elif c.schedule == "cosine":
        after = optax.cosine_decay_schedule(peak, c.total_steps - warm, alpha=c.end_lr_fraction)
    else:
        after = optax.linear_schedule(peak, peak * c.end_lr_fraction, c.total_steps - warm)
    if warm == 0:
        return after
    return optax.join_schedules([optax.linear_schedule(0.0, peak, warm), after], [warm])


DECAYED_PARAM_NAMES = ("kernel", "embedding", "rel_embedding")


def _decay_mask(params):
    """Decay kernels and embeddings by name, never norm scales (rank would misjudge scanned
    layers, whose scales are stacked to [layers, embed])."""

    def decayed(path, _):
        last = path[-1]
        name = getattr(last, "key", getattr(last, "name", None))
        return name in DECAYED_PARAM_NAMES

    return jax.tree_util.tree_map_with_path(decayed, params)


def make_optimizer(c: OptimizerConfig) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """(optax transformation, schedule); clipping is applied before the update rule."""
    schedule = make_schedule(c)
    if c.name == "adamw":
        rule = optax.adamw(
            schedule, b1=c.b1, b2=c.b2, eps=c.eps, weight_decay=c.weight_decay, mask=_decay_mask
        )
    elif c.name == "adafactor":
        rule = optax.adafactor(
            schedule,
            weight_decay_rate=c.weight_decay or None,
            weight_decay_mask=_decay_mask,
            clipping_threshold=None,
        )
    else:
        rule = optax.sgd(schedule)
    parts = ([optax.clip_by_global_norm(c.clip_grad_norm)] if c.clip_grad_norm else []) + [rule]
    return optax.chain(*parts), schedule
