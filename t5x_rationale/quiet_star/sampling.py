"""Thought-token sampling (exact two-level inverse CDF) and token log-probabilities."""

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

    This is the distribution hard Gumbel-max sampling draws from, sampled by inverse CDF in
    two levels (a block of `_BLOCK` ids by its mass, then an id inside it by its mass), so
    each row needs two uniforms instead of vocabulary-many Gumbel draws, the cost that
    dominated a thinking step on CPU. A zero-mass (banned) id is never chosen: it adds
    nothing to a cumulative sum, so no threshold can fall on it.
    """
    logits = jax.lax.stop_gradient(logits).astype(jnp.float32)
    logits = jnp.where(_is_id(logits, banned_ids), -jnp.inf, logits)
    if temperature == 0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    vocab = logits.shape[-1]
    blocks = -(-vocab // _BLOCK)
    scaled = jnp.pad(
        logits / temperature,
        [(0, 0)] * (logits.ndim - 1) + [(0, blocks * _BLOCK - vocab)],
        constant_values=-jnp.inf,
    )
    probs = jnp.exp(scaled - jnp.max(scaled, axis=-1, keepdims=True)).reshape(
        logits.shape[:-1] + (blocks, _BLOCK)
    )
    u = jax.random.uniform(rng, (2,) + logits.shape[:-1], minval=jnp.finfo(jnp.float32).tiny)
    block = _inverse_cdf(jnp.sum(probs, axis=-1), u[0])
    inside = jnp.take_along_axis(probs, block[..., None, None], axis=-2)[..., 0, :]
    return (block * _BLOCK + _inverse_cdf(inside, u[1])).astype(jnp.int32)


_BLOCK = 128


def _inverse_cdf(mass, u):
    """The index j with cdf[j - 1] < u * total <= cdf[j] along the last axis (mass >= 0)."""
    cdf = jnp.cumsum(mass, axis=-1)
    return jnp.sum(cdf < u[..., None] * cdf[..., -1:], axis=-1).astype(jnp.int32)
