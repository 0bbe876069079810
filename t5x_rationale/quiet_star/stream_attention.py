"""Attention of Quiet-STaR's thought streams, with a hand-written backward pass.

Stream i's new token attends, under one softmax, to the context tokens its mask allows and
to its own earlier slots < `slot` plus itself. The forward returns the output and the
per-row log-normaliser `lse`; the backward recomputes the probabilities from `lse` as
``exp(s - lse)`` (no max or sum passes over the scores) and takes the row term from the
output (``sum_k P dP = dO . O``), as flash attention does. A step that recorded its output
and `lse` in the forward pass differentiates through `replayed_stream_attention`, which
runs only that backward.

Shapes: q [N, T, heads, d]; new_k/v [N, T, kv_heads, d]; slot_k/v [N, T, kv_heads, S, d]
(S may be 0); ctx_k/v [N, C, kv_heads, d] with ctx_mask [N or 1, 1, T, C] (C = T in
training; the KV cache length when generating). lse is [N, T, kv_heads, group]
(heads = kv_heads * group).

Layouts are chosen so every product is a batched matmul with no copy of the big operands:
the context part heads-major ([N, kv, group * T, d], as in `softmax_attention`), the own
slots batched over (row, position, kv head) with the slot axis next to head_dim, so a
[group, d] x [d, S] product reads each stream's slots where they lie.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from t5x_rationale.architectures.softmax_attention import heads_major, tokens_major

_NEG = -0.7 * float(jnp.finfo(jnp.float32).max)
_F32 = dict(preferred_element_type=jnp.float32)


def _heads_first(x):
    """[N, T, kv, group] row statistics -> [N, kv, group, T] (the context scores' layout)."""
    return x.transpose(0, 2, 3, 1)


def _tokens_first(x):
    """Inverse of `_heads_first`: [N, kv, group, T] -> [N, T, kv, group]."""
    return x.transpose(0, 3, 1, 2)


def _scores(q, ctx_k, slot_k, new_k, slot, ctx_mask):
    """Scaled, masked scores: context [N, kv, g, T, C], own slots [N, T, kv, g, S],
    new [N, T, kv, g]."""
    n, t, heads, d = q.shape
    kv_heads, num_slots = ctx_k.shape[2], slot_k.shape[3]
    group = heads // kv_heads
    scale = d**-0.5
    s_ctx = jnp.einsum(
        "bhqd,bhkd->bhqk", heads_major(q, kv_heads), heads_major(ctx_k, kv_heads), **_F32
    )
    s_ctx = jnp.where(ctx_mask[:, :, None], s_ctx.reshape(n, kv_heads, group, t, -1) * scale, _NEG)
    qg = q.reshape(n, t, kv_heads, group, d)
    s_own = None
    if num_slots:  # no slots: step 1 run alone, before any stream token exists
        s_own = jnp.einsum("nikgd,niksd->nikgs", qg, slot_k, **_F32) * scale
        s_own = jnp.where(jnp.arange(num_slots) < slot, s_own, _NEG)
    s_new = jnp.einsum("nikgd,nikd->nikg", qg, new_k, **_F32) * scale
    return s_ctx, s_own, s_new


def _combine(p_ctx, p_own, p_new, ctx_v, slot_v, new_v):
    """sum over keys of P V, unnormalised: [N, T, kv, group, d]."""
    n, kv_heads, group, t, context = p_ctx.shape
    dt = ctx_v.dtype
    out = jnp.einsum(
        "bhqk,bhkd->bhqd",
        p_ctx.reshape(n, kv_heads, group * t, context).astype(dt),
        heads_major(ctx_v, kv_heads),
    )
    out = (
        tokens_major(out, t).reshape(n, t, kv_heads, group, -1)
        + p_new[..., None].astype(dt) * new_v[:, :, :, None]
    )
    return (
        out if p_own is None else out + jnp.einsum("nikgs,niksd->nikgd", p_own.astype(dt), slot_v)
    )


def _forward(q, ctx_k, ctx_v, slot_k, slot_v, new_k, new_v, slot, ctx_mask):
    s_ctx, s_own, s_new = _scores(q, ctx_k, slot_k, new_k, slot, ctx_mask)
    m = jnp.maximum(_tokens_first(jnp.max(s_ctx, -1)), s_new)
    m = m if s_own is None else jnp.maximum(m, jnp.max(s_own, -1))
    p_ctx = jnp.exp(s_ctx - _heads_first(m)[..., None])
    p_own, p_new = _own_probs(s_own, m), jnp.exp(s_new - m)
    total = _tokens_first(jnp.sum(p_ctx, -1)) + p_new  # >= 1 with the own slots: the max is in it
    total = total if p_own is None else total + jnp.sum(p_own, -1)
    out = _combine(p_ctx, p_own, p_new, ctx_v, slot_v, new_v) / total[..., None].astype(ctx_v.dtype)
    return out.reshape(q.shape), m + jnp.log(total)


def _own_probs(s_own, m):
    """exp(s_own - m) over the own slots, None without slots."""
    return None if s_own is None else jnp.exp(s_own - m[..., None])


def _backward(inputs, out, lse, d_out, d_lse):
    """Cotangents of (q, ctx_k, ctx_v, slot_k, slot_v, new_k, new_v) from the recorded out, lse."""
    q, ctx_k, ctx_v, slot_k, slot_v, new_k, new_v, slot, ctx_mask = inputs
    n, t, heads, d = q.shape
    kv_heads, group = ctx_k.shape[2], heads // ctx_k.shape[2]
    scale = d**-0.5
    s_ctx, s_own, s_new = _scores(q, ctx_k, slot_k, new_k, slot, ctx_mask)
    p_ctx = jnp.exp(s_ctx - _heads_first(lse)[..., None])  # masked scores give exactly 0
    p_own, p_new = _own_probs(s_own, lse), jnp.exp(s_new - lse)
    d_out_g = d_out.reshape(n, t, kv_heads, group, d)
    # d score = P (dP - row), row = sum_k P dP - d_lse = dO . O - d_lse
    row = (
        jnp.sum(d_out_g.astype(jnp.float32) * out.reshape(d_out_g.shape).astype(jnp.float32), -1)
        - d_lse
    )

    qh, kh, vh, doh = (heads_major(x, kv_heads) for x in (q, ctx_k, ctx_v, d_out))
    p_flat = p_ctx.reshape(n, kv_heads, group * t, -1)
    # [d, k] = [d, q] @ [q, k]: both operands row-major (see softmax_attention)
    d_ctx_v = jnp.einsum("bhdq,bhqk->bhdk", doh.swapaxes(-1, -2), p_flat.astype(vh.dtype), **_F32)
    dp_ctx = jnp.einsum("bhqd,bhkd->bhqk", doh, vh, **_F32).reshape(p_ctx.shape)
    ds_ctx = (
        (p_ctx * (dp_ctx - _heads_first(row)[..., None]) * scale)
        .reshape(p_flat.shape)
        .astype(q.dtype)
    )
    d_q = tokens_major(jnp.einsum("bhqk,bhkd->bhqd", ds_ctx, kh, **_F32), t)
    d_ctx_k = jnp.einsum("bhdq,bhqk->bhdk", qh.swapaxes(-1, -2), ds_ctx, **_F32)

    ds_new = p_new * (jnp.sum(d_out_g * new_v[:, :, :, None], -1) - row) * scale
    qg = q.reshape(d_out_g.shape)
    d_q_new = ds_new[..., None] * new_k[:, :, :, None]
    if p_own is None:
        d_slot_k = d_slot_v = jnp.zeros_like(slot_k)
    else:
        ds_own = (
            p_own
            * (jnp.einsum("nikgd,niksd->nikgs", d_out_g, slot_v, **_F32) - row[..., None])
            * scale
        )
        d_q_new = d_q_new + jnp.einsum("nikgs,niksd->nikgd", ds_own, slot_k, **_F32)
        d_slot_k = jnp.einsum("nikgs,nikgd->niksd", ds_own, qg, **_F32)
        d_slot_v = jnp.einsum("nikgs,nikgd->niksd", p_own, d_out_g, **_F32)
    d_q = d_q + d_q_new.reshape(d_q.shape)
    d_new_k = jnp.einsum("nikg,nikgd->nikd", ds_new, qg, **_F32)
    d_new_v = jnp.einsum("nikg,nikgd->nikd", p_new, d_out_g, **_F32)
    to_tokens = lambda x: x.transpose(0, 3, 1, 2)  # noqa: E731  [N, kv, d, C] -> [N, C, kv, d]
    grads = (d_q, to_tokens(d_ctx_k), to_tokens(d_ctx_v), d_slot_k, d_slot_v, d_new_k, d_new_v)
    return tuple(g.astype(x.dtype) for g, x in zip(grads, inputs)) + (None, None)


@jax.custom_vjp
def stream_attention(q, ctx_k, ctx_v, slot_k, slot_v, new_k, new_v, slot, ctx_mask):
    """(output [N, T, heads, d], lse [N, T, kv_heads, group]) of the streams' attention."""
    return _forward(q, ctx_k, ctx_v, slot_k, slot_v, new_k, new_v, slot, ctx_mask)


def _fwd(*inputs):
    out, lse = _forward(*inputs)
    return (out, lse), (inputs, out, lse)


def _bwd(residuals, cotangents):
    inputs, out, lse = residuals
    d_out, d_lse = cotangents
    return _backward(inputs, out, lse, d_out, d_lse)


stream_attention.defvjp(_fwd, _bwd)


@jax.custom_vjp
def replayed_stream_attention(
    q, ctx_k, ctx_v, slot_k, slot_v, new_k, new_v, slot, ctx_mask, out, lse
):
    """`out`, recorded from `stream_attention` on these inputs, differentiated as its output.

    Costs nothing forward; the backward is `stream_attention`'s. `out` and `lse` are
    recorded constants and get zero cotangents.
    """
    return out


def _replayed_fwd(*args):
    *inputs, out, lse = args
    return out, (tuple(inputs), out, lse)


def _replayed_bwd(residuals, d_out):
    inputs, out, lse = residuals
    return _backward(inputs, out, lse, d_out, jnp.zeros_like(lse)) + (
        jnp.zeros_like(out),
        jnp.zeros_like(lse),
    )


replayed_stream_attention.defvjp(_replayed_fwd, _replayed_bwd)
