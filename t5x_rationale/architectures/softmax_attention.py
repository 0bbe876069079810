"""Softmax attention in XLA with a hand-written backward pass.

Autodiff of softmax attention reduces ``dP * P`` over every key of the [.., q, k] score
matrix and, for a bias shared by the batch, sums the score gradient over the batch inside
one elementwise fusion. XLA on CPU fuses both into the neighbouring matmuls as slow
strided loops. The backward here takes the row term from the output instead
(``sum_k P dP = dO . O``, as flash attention does), so each product is a plain matmul, and
reduces a shared bias's gradient over the batch with a matrix-vector product.

Shapes: query [b, q, heads, d]; key/value [b, k, kv_heads, d]; bias broadcastable to
[b, heads, q, k] (additive, any float dtype); mask boolean, broadcastable likewise, True =
attend. Dropout is not supported here; `attention.dot_product_attention` falls back to
autodiff when it is active.
"""

from __future__ import annotations

import functools
from typing import Optional

import jax
import jax.numpy as jnp

MASK_VALUE = -0.7 * float(jnp.finfo(jnp.float32).max)


def _grouped(x: jax.Array, kv_heads: int) -> jax.Array:
    """[b, heads or 1, q, k] -> [b, kv_heads or 1, group or 1, q, k]."""
    if x.shape[1] == 1:
        return x[:, :, None]
    return x.reshape(x.shape[0], kv_heads, x.shape[1] // kv_heads, *x.shape[2:])


def heads_major(x: jax.Array, kv_heads: int) -> jax.Array:
    """[b, len, heads, d] -> [b, kv_heads, group * len, d]: one matmul per (b, kv head)."""
    b, length, heads, d = x.shape
    x = x.reshape(b, length, kv_heads, heads // kv_heads, d).transpose(0, 2, 3, 1, 4)
    return x.reshape(b, kv_heads, -1, d)


def tokens_major(x: jax.Array, q_len: int) -> jax.Array:
    """Inverse of `heads_major`: [b, kv_heads, group * q, d] -> [b, q, heads, d]."""
    b, kv_heads, gq, d = x.shape
    x = x.reshape(b, kv_heads, gq // q_len, q_len, d).transpose(0, 3, 1, 2, 4)
    return x.reshape(b, q_len, -1, d)


def heads_first(x: jax.Array) -> jax.Array:
    """[b, len, kv_heads, d] -> [b, kv_heads, len, d], the decode cache's layout."""
    return x.transpose(0, 2, 1, 3)


def cached_attention(query, key, value, bias, mask, scale) -> jax.Array:
    """Softmax attention over heads-major keys and values [b, kv_heads, k, d] (the decode
    cache), forward only: query [b, q, heads, d] -> [b, q, heads, d] in the value dtype.
    `scale` None is 1/sqrt(d)."""
    q_len = query.shape[1]
    scale = query.shape[-1] ** -0.5 if scale is None else scale
    qh = heads_major(query, key.shape[1])
    probs = probabilities(qh, key, bias, mask, scale, q_len)
    out = jnp.einsum("bhqk,bhkd->bhqd", probs.astype(value.dtype), value)
    return tokens_major(out, q_len)


def probabilities(qh, kh, bias, mask, scale, q_len):
    """Softmax probabilities [b, kv_heads, group * q, k] in float32 from heads-major q, k."""
    b, kv_heads, gq, _ = qh.shape
    scores = jnp.einsum("bhqd,bhkd->bhqk", qh, kh, preferred_element_type=jnp.float32) * scale
    scores = scores.reshape(b, kv_heads, gq // q_len, q_len, -1)
    if bias is not None:
        scores = scores + _grouped(bias, kv_heads).astype(jnp.float32)
    if mask is not None:
        scores = jnp.where(_grouped(mask, kv_heads), scores, MASK_VALUE)
    return jax.nn.softmax(scores, axis=-1).reshape(b, kv_heads, gq, -1)


def _forward(query, key, value, bias, mask, scale):
    kv_heads, q_len = key.shape[2], query.shape[1]
    qh, kh, vh = (heads_major(x, kv_heads) for x in (query, key, value))
    probs = probabilities(qh, kh, bias, mask, scale, q_len)
    out = jnp.einsum("bhqk,bhkd->bhqd", probs.astype(value.dtype), vh)
    return tokens_major(out, q_len), (qh, kh, vh, probs, out)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def softmax_attention(
    query: jax.Array,
    key: jax.Array,
    value: jax.Array,
    bias: Optional[jax.Array],
    mask: Optional[jax.Array],
    scale: float,
) -> jax.Array:
    """softmax(q k^T * scale + bias, masked) v, output in the value dtype."""
    return _forward(query, key, value, bias, mask, scale)[0]


def _fwd(query, key, value, bias, mask, scale):
    out, residuals = _forward(query, key, value, bias, mask, scale)
    return out, (residuals, bias, mask, query.shape[1])


def _reduce_to(ds: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """Sums ds [b, heads, q, k] over the dims that `shape` broadcasts (batch by a matvec)."""
    inner = tuple(i for i in (1, 2, 3) if shape[i] == 1 and ds.shape[i] > 1)
    if inner:
        ds = ds.sum(axis=inner, keepdims=True)
    if shape[0] == 1 and ds.shape[0] > 1:
        flat = ds.reshape(ds.shape[0], -1)
        ds = jnp.dot(jnp.ones((ds.shape[0],), ds.dtype), flat).reshape((1,) + ds.shape[1:])
    return ds


def _attending_rows(mask: jax.Array, kv_heads: int, group: int, q_len: int) -> jax.Array:
    """[b, kv_heads, group * q, 1]: True where the query attends to at least one key.

    Masked scores are constants, so their gradient is zero. In a row with any allowed key
    their probability is exactly 0 (exp of the mask value underflows), so ``P (dP - row)``
    is already zero there; a fully masked row has probability 1/k everywhere instead, and
    zeroing its output gradient zeroes its score gradient without a pass over [q, k].
    """
    rows = jnp.any(_grouped(mask, kv_heads), axis=-1)  # [b, kv|1, g|1, q]
    rows = jnp.broadcast_to(rows, rows.shape[:1] + (kv_heads, group, q_len))
    return rows.reshape(rows.shape[0], kv_heads, -1, 1)


def _bwd(scale, residuals, d_out):
    (qh, kh, vh, probs, out), bias, mask, q_len = residuals
    b, kv_heads, gq, d = qh.shape
    f32 = jnp.float32
    d_out = heads_major(d_out, kv_heads)
    # Key and value gradients as [d, k] = [d, q] @ [q, k]: both operands row-major, which
    # runs about 1.5x faster on CPU than contracting the score matrix's leading q axis.
    d_value = jnp.einsum(
        "bhdq,bhqk->bhdk",
        d_out.swapaxes(-1, -2),
        probs.astype(vh.dtype),
        preferred_element_type=f32,
    )
    if mask is not None:
        d_out = d_out * _attending_rows(mask, kv_heads, gq // q_len, q_len).astype(d_out.dtype)
    d_probs = jnp.einsum("bhqd,bhkd->bhqk", d_out, vh, preferred_element_type=f32)
    row = jnp.sum(d_out.astype(f32) * out.astype(f32), axis=-1, keepdims=True)
    d_scores = probs * (d_probs - row)
    d_bias = None
    if bias is not None:
        d_bias = _reduce_to(d_scores.reshape(b, -1, q_len, d_scores.shape[-1]), bias.shape)
        d_bias = d_bias.astype(bias.dtype)
    d_scores = (d_scores * scale).astype(qh.dtype)
    d_query = jnp.einsum("bhqk,bhkd->bhqd", d_scores, kh, preferred_element_type=f32)
    d_key = jnp.einsum("bhdq,bhqk->bhdk", qh.swapaxes(-1, -2), d_scores, preferred_element_type=f32)
    back = lambda x, dtype: x.transpose(0, 3, 1, 2).astype(dtype)  # noqa: E731  [b, k, kv, d]
    return (
        tokens_major(d_query, q_len).astype(qh.dtype),
        back(d_key, kh.dtype),
        back(d_value, vh.dtype),
        d_bias,
        None,
    )


softmax_attention.defvjp(_fwd, _bwd)
