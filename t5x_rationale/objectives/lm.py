"""Teacher-forced cross-entropy for seq2seq and decoder-only LMs (the plain objective).

An objective is `loss(model, params, batch, rng) -> (scalar, metrics)`. `rng` None means
deterministic (no dropout). Metrics are scalars averaged over this batch; the key
`denominator` is the weight of this batch when microbatches or hosts are averaged.
"""

from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from t5x_rationale.architectures import model_inputs
from t5x_rationale.objectives.cross_entropy import (
    token_accuracy,
    token_cross_entropy,
    weighted_mean,
)


def forward_logits(
    model: nn.Module, params: Any, batch: dict, rng: Optional[jax.Array]
) -> jax.Array:
    """Teacher-forced float32 logits; dropout is on exactly when an rng is given."""
    rngs = {} if rng is None else {"dropout": rng}
    return model.apply(
        {"params": params}, **model_inputs(batch), deterministic=rng is None, rngs=rngs
    )


def token_loss(
    model: nn.Module,
    params: Any,
    batch: dict,
    rng: Optional[jax.Array],
    *,
    z_loss: float = 1e-4,
    label_smoothing: float = 0.0,
) -> tuple[jax.Array, dict]:
    """Mean cross-entropy over target tokens weighted by `decoder_loss_weights`.

    Works for both architectures: the batch decides (encoder inputs present or not).
    """
    logits = forward_logits(model, params, batch, rng)
    targets = batch["decoder_target_tokens"]
    weights = batch.get("decoder_loss_weights")
    if weights is None:
        weights = (targets > 0).astype(jnp.float32)
    per_token, z_term = token_cross_entropy(
        logits, targets, z_loss=z_loss, label_smoothing=label_smoothing
    )
    loss, denominator = weighted_mean(per_token, weights)
    correct = token_accuracy(logits, targets)
    metrics = {
        "loss": loss,
        "z_loss": weighted_mean(z_term, weights)[0],
        "accuracy": weighted_mean(correct, weights)[0],
        "denominator": denominator,
    }
    return loss, metrics
