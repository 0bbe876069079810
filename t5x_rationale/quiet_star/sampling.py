"""Thought-token sampling, the two-level inverse-CDF draw that decoding shares, and token
log-probabilities."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def token_logp(logits, ids, temperature: float = 1.0):
    """log softmax(logits / temperature)[ids] along the last axis."""
    log_probs = jax.nn.log_softmax(logits / temperature, axis=-1)
    return jnp.take_along_axis(log_probs, ids[..., None], axis=-1)[..., 0]


def without_ids(logits, ids):
    """`logits` with the columns `ids` set to -1e10, out of any softmax's normaliser (the
    reference masks the thought ids so before sampling and before the policy term)."""
    return jnp.where(_is_id(logits, ids), jnp.asarray(-1e10, logits.dtype), logits)


def _is_id(logits, ids):
    """[vocab] bool: True at the columns `ids`; ids past the last column (thought ids appended
    after an imported vocabulary, which the LM head never scores) are left out."""
    vocab = logits.shape[-1]
    inside = [i for i in ids if i < vocab]
    return jnp.zeros(vocab, bool).at[jnp.asarray(inside, jnp.int32)].set(True)


def sample_token(logits, banned_ids, temperature: float, rng):
    """A token drawn from softmax(logits / temperature) (0: argmax); `banned_ids` are never drawn.

    This is the distribution hard Gumbel-max sampling draws from, drawn by `inverse_cdf_draw`
    (two uniforms per row instead of vocabulary-many Gumbel draws, the cost that dominated a
    thinking step on CPU). A banned id has zero mass, so it is never chosen.
    """
    logits = jax.lax.stop_gradient(logits).astype(jnp.float32)
    logits = jnp.where(_is_id(logits, banned_ids), -jnp.inf, logits)
    if temperature == 0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    scaled = logits / temperature
    return inverse_cdf_draw(rng, jnp.exp(scaled - jnp.max(scaled, axis=-1, keepdims=True)))


BLOCK = 128


def inverse_cdf_draw(rng, weights):
    """[..., V] non-negative weights (some positive in each row) -> [...] int32 index drawn
    with probability weight / row total; zero-weight entries are never chosen.

    Two levels: a block of `BLOCK` entries by its mass, then an entry inside it by its mass,
    each with its own uniform, so no pass over the vocabulary sorts or draws per entry.
    """
    u = jax.random.uniform(rng, (2,) + weights.shape[:-1], minval=jnp.finfo(jnp.float32).tiny)
    return locate(weights, u)


def locate(weights, u):
    """The index that uniforms u [2, ...] pick: the block j with cdf[j - 1] < u[0] * total <=
    cdf[j] over the block masses, then the entry inside it by u[1] likewise."""
    vocab = weights.shape[-1]
    blocks = -(-vocab // BLOCK)
    padded = jnp.pad(
        weights.astype(jnp.float32), [(0, 0)] * (weights.ndim - 1) + [(0, blocks * BLOCK - vocab)]
    ).reshape(weights.shape[:-1] + (blocks, BLOCK))
    block = _inverse_cdf(jnp.sum(padded, axis=-1), u[0])
    inside = jnp.take_along_axis(padded, block[..., None, None], axis=-2)[..., 0, :]
    return (block * BLOCK + _inverse_cdf(inside, u[1])).astype(jnp.int32)


def _inverse_cdf(mass, u):
    """The index j with cdf[j - 1] < t <= cdf[j] along the last axis (mass >= 0), t = u * total
    but at least the smallest normal float, so u = 0 picks the first entry with mass."""
    cdf = jnp.cumsum(mass, axis=-1)
    target = jnp.maximum(u[..., None] * cdf[..., -1:], jnp.finfo(jnp.float32).tiny)
    return jnp.sum(cdf < target, axis=-1).astype(jnp.int32)
