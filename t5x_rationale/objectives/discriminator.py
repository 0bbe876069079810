"""The training loss of QCRD's discriminator D(x, r) (`architectures.discriminator`).

Binary cross-entropy of D's logit against `candidate_is_positive` (teacher positives 1,
negatives 0), averaged over the valid candidates of the batch (`candidate_mask` 1 and at
least one token); padded slots contribute nothing. It has the objective signature, with D
as the model and its own params, and reads a `CandidatesConverter` batch (or the candidate
part of a QCRD batch, `qcrd.split_qcrd_batch`): D is pre-trained on it and then updated
every M steps, with its own optimizer, while the student loss only reads its scores.
"""

from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp


def discriminator_loss(
    discriminator: nn.Module,
    params: Any,
    batch: dict,
    rng: Optional[jax.Array],
) -> tuple[jax.Array, dict]:
    """Masked mean BCE of D on positives vs negatives; `denominator` is the valid count."""
    targets, weights = batch["candidate_target_tokens"], batch["candidate_loss_weights"]
    rngs = {} if rng is None else {"dropout": rng}
    logits = discriminator.apply(
        {"params": params},
        batch["encoder_input_tokens"],
        targets,
        weights,
        deterministic=rng is None,
        logits=True,
        rngs=rngs,
    )
    valid = (batch["candidate_mask"] > 0) & jnp.any(weights > 0, axis=-1)
    weights = valid.astype(jnp.float32)
    labels = (batch["candidate_is_positive"] > 0).astype(jnp.float32)
    bce = -(labels * jax.nn.log_sigmoid(logits) + (1.0 - labels) * jax.nn.log_sigmoid(-logits))
    count = jnp.sum(weights)
    loss = jnp.sum(bce * weights) / jnp.maximum(count, 1.0)
    scores = jax.nn.sigmoid(logits)
    pos_w, neg_w = weights * labels, weights * (1.0 - labels)
    correct = (logits > 0) == (labels > 0)
    return loss, {
        "loss": loss,
        "accuracy": jnp.sum(correct * weights) / jnp.maximum(count, 1.0),
        "positive_score": jnp.sum(scores * pos_w) / jnp.maximum(jnp.sum(pos_w), 1.0),
        "negative_score": jnp.sum(scores * neg_w) / jnp.maximum(jnp.sum(neg_w), 1.0),
        "positives": jnp.sum(pos_w),
        "negatives": jnp.sum(neg_w),
        "denominator": count,
    }
