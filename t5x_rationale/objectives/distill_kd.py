"""Teacher-logit distillation (Mentor-KD style, Lee et al. 2024).

    L = (1 - lam) * CE(student, y) + lam * c * KL_T(p_teacher || p_student)

over target tokens (token means weighted by `decoder_loss_weights`), where p_* are softmaxes
of the logits divided by the temperature T, the teacher runs teacher-forced on the same batch
with no gradient, and c = T^2 when `t_squared` (Hinton's gradient-scale correction) else 1
(Mentor-KD omits it). Defaults: lam 0.3, T 2.

The teacher's params arrive as `constants["teacher"]` (see `Trainer(constants=...)`), so
they are a sharded argument of the jitted step, never part of the train state.
"""

from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from t5x_rationale.objectives.cross_entropy import (
    token_accuracy,
    token_cross_entropy,
    weighted_mean,
)
from t5x_rationale.objectives.lm import forward_logits


def kl_divergence(
    teacher_logits: jax.Array, student_logits: jax.Array, temperature: float
) -> jax.Array:
    """Per-position KL(softmax(t / T) || softmax(s / T)) over the last axis, in float32."""
    t = jax.nn.log_softmax(teacher_logits.astype(jnp.float32) / temperature, axis=-1)
    s = jax.nn.log_softmax(student_logits.astype(jnp.float32) / temperature, axis=-1)
    return jnp.sum(jnp.exp(t) * (t - s), axis=-1)


def kd_loss(
    model: nn.Module,
    params: Any,
    batch: dict,
    rng: Optional[jax.Array],
    *,
    constants: dict,
    teacher_model: nn.Module,
    lam: float = 0.3,
    temperature: float = 2.0,
    t_squared: bool = False,
    z_loss: float = 1e-4,
) -> tuple[jax.Array, dict]:
    """Cross-entropy on the labels mixed with the KL to a frozen teacher's distribution."""
    if not 0.0 <= lam <= 1.0 or temperature <= 0:
        raise ValueError(
            f"need 0 <= lam <= 1 and temperature > 0, got lam={lam}, temperature={temperature}"
        )
    logits = forward_logits(model, params, batch, rng)
    teacher_logits = jax.lax.stop_gradient(
        forward_logits(teacher_model, constants["teacher"], batch, None)
    )
    if teacher_logits.shape != logits.shape:
        raise ValueError(
            f"teacher logits {teacher_logits.shape} and student logits {logits.shape} differ: "
            "the teacher must share the student's vocabulary"
        )
    targets = batch["decoder_target_tokens"]
    weights = batch.get("decoder_loss_weights", (targets > 0).astype(jnp.float32))
    ce, _ = token_cross_entropy(logits, targets, z_loss=z_loss)
    ce_mean, denominator = weighted_mean(ce, weights)
    kl_mean, _ = weighted_mean(kl_divergence(teacher_logits, logits, temperature), weights)
    scale = temperature**2 if t_squared else 1.0
    loss = (1.0 - lam) * ce_mean + lam * scale * kl_mean
    correct = token_accuracy(logits, targets)
    teacher_correct = token_accuracy(teacher_logits, targets)
    return loss, {
        "loss": loss,
        "ce_loss": ce_mean,
        "kl": kl_mean,
        "accuracy": weighted_mean(correct, weights)[0],
        "teacher_accuracy": weighted_mean(teacher_correct, weights)[0],
        "denominator": denominator,
    }
