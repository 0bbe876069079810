"""Decoder-only rows that continue one right-padded prompt with each of K continuations.

A decoder-only student scores QCRD's candidate rationales and PINTO's choices the way the
prefix-LM converter lays out `inputs ++ targets`: row (b, k) holds prompt b up to its last
non-zero token (both tasks' prompts end with the EOS their converters append, so a text
token at id 0 inside a prompt is kept), then continuation k, then the padding of both, where
a causal model never sees it. Inputs are the rows shifted right with 0, as in training.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def prompt_continuation_rows(
    prompt: jax.Array, continuations: jax.Array, weights: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(inputs [B*K, L], targets [B, K, L], weights [B, K, L]) with L = Lp + Lc, from prompts
    [B, Lp] and continuations with their weights [B, K, Lc]; only continuation tokens carry
    their weights."""
    batch, num, cont_len = continuations.shape
    length = prompt.shape[1] + cont_len
    pos = jnp.arange(length)[None, None, :]
    last = jnp.arange(1, prompt.shape[1] + 1)
    n_p = jnp.max(jnp.where(prompt != 0, last, 0), axis=1)[:, None, None]
    p_index = jnp.broadcast_to(jnp.minimum(pos, prompt.shape[1] - 1), (batch, 1, length))
    p_tokens = jnp.take_along_axis(prompt[:, None, :], p_index, axis=-1)
    c_index = jnp.broadcast_to(jnp.clip(pos - n_p, 0, cont_len - 1), (batch, num, length))
    in_continuation = (pos >= n_p) & (pos - n_p < cont_len)
    c_tokens = jnp.where(in_continuation, jnp.take_along_axis(continuations, c_index, axis=-1), 0)
    targets = jnp.where(pos < n_p, p_tokens, c_tokens)
    row_weights = jnp.where(in_continuation, jnp.take_along_axis(weights, c_index, axis=-1), 0.0)
    flat = targets.reshape(batch * num, length)
    inputs = jnp.pad(flat[:, :-1], ((0, 0), (1, 0)))
    return inputs, targets, row_weights
