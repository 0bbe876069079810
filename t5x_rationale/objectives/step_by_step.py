"""Distilling step-by-step (Hsieh et al. 2023): label and rationale tasks in one step.

The batch mixes `predict:` rows (task id 1) and `explain:` rows (task id 2), packed together
by `MultiTaskEncDecConverter` / `MultiTaskDecoderConverter`, which tag every target token with
its task. Each task's cross-entropy is the token mean over *its own* target tokens, so long
rationales do not outweigh short labels, and

    L = alpha * CE(label) + (1 - alpha) * CE(rationale),      alpha = 0.5.

alpha = 1 is the label-only baseline on the same data. A batch without tokens of one task
contributes 0 for that task. With gradient accumulation each microbatch is normalised on its
own (the per-task means are not re-weighted across microbatches).
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

LABEL_TASK_ID = 1
RATIONALE_TASK_ID = 2


def require_task_ids(
    batch: dict, loss_name: str, hint: str = "a MultiTask*Converter on a step-by-step mixture"
) -> None:
    """A clear KeyError when the batch has no per-token `decoder_task_ids`."""
    if "decoder_task_ids" not in batch:
        raise KeyError(
            f"{loss_name} needs batch['decoder_task_ids'] (use {hint}); got {sorted(batch)}"
        )


def token_terms(
    model: nn.Module,
    params: Any,
    batch: dict,
    rng: Optional[jax.Array],
    *,
    z_loss: float,
    label_smoothing: float,
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """The per-token terms a per-task loss averages, each [batch, length] float32.

    Returns:
      (cross-entropy incl. z-loss, z-loss term, 1 where the argmax is the target,
      `decoder_loss_weights` or, without them, 1 on non-padding targets).
    """
    logits = forward_logits(model, params, batch, rng)
    targets = batch["decoder_target_tokens"]
    weights = batch.get("decoder_loss_weights", (targets > 0).astype(jnp.float32)).astype(
        jnp.float32
    )
    per_token, z_term = token_cross_entropy(
        logits, targets, z_loss=z_loss, label_smoothing=label_smoothing
    )
    return per_token, z_term, token_accuracy(logits, targets), weights


def step_by_step_loss(
    model: nn.Module,
    params: Any,
    batch: dict,
    rng: Optional[jax.Array],
    *,
    alpha: float = 0.5,
    z_loss: float = 1e-4,
    label_smoothing: float = 0.0,
    label_task_id: int = LABEL_TASK_ID,
    rationale_task_id: int = RATIONALE_TASK_ID,
) -> tuple[jax.Array, dict]:
    """alpha-mixed per-task token-mean cross-entropy; needs `decoder_task_ids` in the batch."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    require_task_ids(batch, "step_by_step_loss")
    per_token, z_term, correct, weights = token_terms(
        model, params, batch, rng, z_loss=z_loss, label_smoothing=label_smoothing
    )
    task_ids = batch["decoder_task_ids"]
    label_w = weights * (task_ids == label_task_id)
    rationale_w = weights * (task_ids == rationale_task_id)
    label_loss, label_tokens = weighted_mean(per_token, label_w)
    rationale_loss, rationale_tokens = weighted_mean(per_token, rationale_w)
    loss = alpha * label_loss + (1.0 - alpha) * rationale_loss
    metrics = {
        "loss": loss,
        "label_loss": label_loss,
        "rationale_loss": rationale_loss,
        "label_accuracy": weighted_mean(correct, label_w)[0],
        "rationale_accuracy": weighted_mean(correct, rationale_w)[0],
        "accuracy": weighted_mean(correct, weights)[0],
        "z_loss": weighted_mean(z_term, weights)[0],
        "label_token_fraction": label_tokens / jnp.maximum(label_tokens + rationale_tokens, 1e-8),
        "denominator": label_tokens + rationale_tokens,
    }
    return loss, metrics
