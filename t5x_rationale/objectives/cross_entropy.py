"""Token cross-entropy with z-loss and label smoothing, the base of every objective."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def token_cross_entropy(
    logits: jax.Array, targets: jax.Array, *, z_loss: float = 0.0, label_smoothing: float = 0.0
) -> tuple[jax.Array, jax.Array]:
    """Per-token cross-entropy (plus z-loss) without materialising one-hot targets.

    Label smoothing puts `1 - label_smoothing` on the target and spreads the rest evenly over
    the other `vocab - 1` ids; the entropy of that distribution is subtracted (T5X
    convention), so a perfect prediction of the smoothed targets scores 0.

    Args:
      logits: [..., vocab], any float dtype (computed in float32).
      targets: [...] integer ids.
      z_loss: coefficient of log(Z)^2, which keeps the softmax normaliser near 1.
      label_smoothing: in [0, 1).

    Returns:
      (loss, z_loss_term), both [...] float32; `loss` already includes the z-loss term.
    """
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
    logits = logits.astype(jnp.float32)
    vocab = logits.shape[-1]
    log_z = jax.nn.logsumexp(logits, axis=-1)
    target_logit = jnp.take_along_axis(logits, targets[..., None].astype(jnp.int32), axis=-1)[
        ..., 0
    ]
    if label_smoothing > 0.0:
        confidence = 1.0 - label_smoothing
        low = label_smoothing / (vocab - 1)
        expected_logit = low * jnp.sum(logits, axis=-1) + (confidence - low) * target_logit
        entropy = -(confidence * jnp.log(confidence) + (vocab - 1) * low * jnp.log(low))
        loss = log_z - expected_logit - entropy
    else:
        loss = log_z - target_logit
    z_term = z_loss * jnp.square(log_z)
    return loss + z_term, z_term


def token_accuracy(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """[...] float32: 1 where argmax(logits) == target, ties going to the first index.

    Tested as "the target logit is the maximum and no earlier id reaches it": two plain
    reductions, which XLA on CPU runs about 2.5x faster than argmax's (value, index)
    reduction over a 32k vocabulary.
    """
    best = jnp.max(logits, axis=-1, keepdims=True)
    target_logit = jnp.take_along_axis(logits, targets[..., None].astype(jnp.int32), axis=-1)
    ids = jax.lax.broadcasted_iota(jnp.int32, logits.shape, logits.ndim - 1)
    earlier = jnp.any((logits == best) & (ids < targets[..., None]), axis=-1)
    return ((target_logit[..., 0] == best[..., 0]) & ~earlier).astype(jnp.float32)


def weighted_mean(values: jax.Array, weights: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(sum(w * v) / max(sum(w), 1e-8), sum(w)) in float32."""
    weights = weights.astype(jnp.float32)
    total = jnp.sum(weights)
    return jnp.sum(values.astype(jnp.float32) * weights) / jnp.maximum(total, 1e-8), total
