"""The streams' attention and its hand-written backward against a plain softmax over all keys."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from t5x_rationale.quiet_star.stream_attention import replayed_stream_attention, stream_attention

N, T, C, S, D = 2, 5, 5, 4, 8


def _inputs(heads, kv_heads, seed=0):
    ks = jax.random.split(jax.random.PRNGKey(seed), 7)
    q = jax.random.normal(ks[0], (N, T, heads, D))
    ctx_k, ctx_v = (jax.random.normal(k, (N, C, kv_heads, D)) for k in ks[1:3])
    slot_k, slot_v = (jax.random.normal(k, (N, T, kv_heads, S, D)) for k in ks[3:5])
    new_k, new_v = (jax.random.normal(k, (N, T, kv_heads, D)) for k in ks[5:7])
    return q, ctx_k, ctx_v, slot_k, slot_v, new_k, new_v


def _mask():
    """Causal, except row 1's position 3 sees no context at all (a sliding window past it)."""
    mask = np.tril(np.ones((T, C), bool))[None, None].repeat(N, axis=0)
    mask[1, 0, 3] = False
    return jnp.asarray(mask)


def _reference(q, ctx_k, ctx_v, slot_k, slot_v, new_k, new_v, slot, ctx_mask):
    """Each stream's keys written out in full ([context, slots, itself]) under one softmax."""
    group = q.shape[2] // ctx_k.shape[2]

    def all_keys(ctx, slots, new):
        ctx = jnp.broadcast_to(ctx[:, None], (N, T) + ctx.shape[1:])  # [N, T, C, kv, d]
        return jnp.concatenate([ctx, slots.transpose(0, 1, 3, 2, 4), new[:, :, None]], axis=2)

    keys = jnp.repeat(all_keys(ctx_k, slot_k, new_k), group, axis=3)
    values = jnp.repeat(all_keys(ctx_v, slot_v, new_v), group, axis=3)
    allowed = jnp.concatenate(
        [
            jnp.broadcast_to(ctx_mask[:, 0, :, None, :], (N, T, 1, C)),
            jnp.broadcast_to(jnp.arange(S) < slot, (N, T, 1, S)),
            jnp.ones((N, T, 1, 1), bool),
        ],
        axis=-1,
    )
    scores = jnp.where(allowed, jnp.einsum("nihd,nijhd->nihj", q, keys) * D**-0.5, -jnp.inf)
    lse = jax.nn.logsumexp(scores, axis=-1)
    out = jnp.einsum("nihj,nijhd->nihd", jnp.exp(scores - lse[..., None]), values)
    return out, lse.reshape(N, T, ctx_k.shape[2], group)


@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (4, 2)])
@pytest.mark.parametrize("slot", [0, 2, S])
def test_stream_attention_and_gradients_match_a_plain_softmax(heads, kv_heads, slot):
    inputs = _inputs(heads, kv_heads)
    mask = _mask()
    out, lse = jax.jit(stream_attention)(*inputs, slot, mask)
    want_out, want_lse = _reference(*inputs, slot, mask)
    np.testing.assert_allclose(out, want_out, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(lse, want_lse, rtol=1e-5, atol=1e-5)

    rng = np.random.default_rng(1)
    d_out = jnp.asarray(rng.normal(size=out.shape), jnp.float32)
    # lse's own gradient is exercised too
    d_lse = jnp.asarray(rng.normal(size=lse.shape), jnp.float32)

    def pulled_back(fn):
        _, vjp = jax.vjp(lambda *x: fn(*x, slot, mask), *inputs)
        return jax.jit(vjp)((d_out, d_lse))

    got, want = pulled_back(stream_attention), pulled_back(_reference)
    names = ("q", "ctx_k", "ctx_v", "slot_k", "slot_v", "new_k", "new_v")
    for name, a, b in zip(names, got, want):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5, err_msg=name)
    # slots the step may not read get no gradient
    assert float(jnp.abs(got[3][:, :, :, slot:]).max(initial=0.0)) == 0.0


def test_replayed_attention_differentiates_as_the_attention():
    inputs = _inputs(4, 2, seed=3)
    mask, slot = _mask(), 3
    out, lse = stream_attention(*inputs, slot, mask)
    d_out = jax.random.normal(jax.random.PRNGKey(9), out.shape)

    def grads(fn):
        return jax.grad(lambda *x: jnp.sum(fn(*x) * d_out), argnums=tuple(range(7)))(*inputs)

    want = grads(lambda *x: stream_attention(*x, slot, mask)[0])
    got = grads(lambda *x: replayed_stream_attention(*x, slot, mask, out, lse))
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(replayed_stream_attention(*inputs, slot, mask, out, lse), out)


def test_stream_attention_without_slots_equals_all_slots_masked():
    """S = 0 (step 1 run before any stream token exists) is the S = 4, slot 0 attention."""
    q, ctx_k, ctx_v, slot_k, slot_v, new_k, new_v = _inputs(4, 2, seed=5)
    mask = _mask()
    none = lambda x: x[:, :, :, :0]  # noqa: E731
    d_out = jax.random.normal(jax.random.PRNGKey(2), q.shape)

    def loss(fn, *x):
        out, lse = fn(*x)
        return jnp.sum(out * d_out) + jnp.sum(jnp.sin(lse))

    without = lambda q, ck, cv, nk, nv: stream_attention(  # noqa: E731
        q, ck, cv, none(slot_k), none(slot_v), nk, nv, 0, mask
    )
    masked = lambda q, ck, cv, nk, nv: stream_attention(q, ck, cv, slot_k, slot_v, nk, nv, 0, mask)  # noqa: E731
    args = (q, ctx_k, ctx_v, new_k, new_v)
    for a, b in zip(jax.jit(without)(*args), jax.jit(masked)(*args)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
    grads = [
        jax.jit(jax.grad(lambda *x, f=f: loss(f, *x), argnums=tuple(range(5))))(*args)
        for f in (without, masked)
    ]
    for a, b in zip(*grads):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
