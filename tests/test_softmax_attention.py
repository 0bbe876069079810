"""The hand-written attention backward against autodiff of a plain softmax attention."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from t5x_rationale.architectures.softmax_attention import MASK_VALUE, softmax_attention


def plain_attention(q, k, v, bias, mask, scale):
    """Written out with repeated kv heads, no custom gradient: autodiff is the reference."""
    group = q.shape[2] // k.shape[2]
    k, v = jnp.repeat(k, group, axis=2), jnp.repeat(v, group, axis=2)
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) * scale
    if bias is not None:
        scores = scores + bias
    if mask is not None:
        scores = jnp.where(mask, scores, MASK_VALUE)
    return jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(scores, axis=-1), v)


def _grads(fn, q, k, v, bias, mask, scale, cotangent):
    def loss(q, k, v, bias):
        return jnp.sum(fn(q, k, v, bias, mask, scale) * cotangent)

    argnums = (0, 1, 2) if bias is None else (0, 1, 2, 3)
    return jax.jit(jax.value_and_grad(loss, argnums=argnums))(q, k, v, bias)


def _packed_mask(b, q_len, k_len):
    """Causal within each row's valid prefix; the padded query rows attend to nothing."""
    lengths = np.array([q_len, q_len - 3] + [q_len - 1] * (b - 2))[:b]
    valid = np.arange(q_len)[None] < lengths[:, None]
    causal = np.arange(k_len)[None, :] <= np.arange(q_len)[:, None]
    return valid[:, None, :, None] & valid[:, None, None, :k_len] & causal


CASES = [
    # heads, kv_heads, bias shape, mask kind
    (4, 4, None, None),
    (4, 4, (1, 4, 6, 6), "packed"),  # T5 encoder: relative bias shared by the batch
    (4, 2, (3, 4, 6, 6), "packed"),  # per-example bias, grouped-query
    (4, 1, (1, 1, 6, 6), "random"),  # one bias for every head, multi-query
    (6, 3, (3, 1, 1, 6), "keys"),  # key-only bias and mask (cross attention)
]


@pytest.mark.parametrize("heads,kv_heads,bias_shape,mask_kind", CASES)
def test_gradients_equal_autodiff_of_plain_attention(heads, kv_heads, bias_shape, mask_kind):
    rng = np.random.default_rng(heads * 7 + kv_heads)
    b, q_len, k_len, d = 3, 6, 6, 8
    q = jnp.asarray(rng.standard_normal((b, q_len, heads, d)), jnp.float32)
    k, v = (
        jnp.asarray(rng.standard_normal((b, k_len, kv_heads, d)), jnp.float32) for _ in range(2)
    )
    bias = None if bias_shape is None else jnp.asarray(rng.standard_normal(bias_shape), jnp.float32)
    mask = {
        None: None,
        "packed": _packed_mask(b, q_len, k_len),
        "random": rng.random((b, 1, q_len, k_len)) > 0.4,
        "keys": rng.random((b, 1, 1, k_len)) > 0.3,
    }[mask_kind]
    if mask is not None:
        mask = jnp.asarray(mask)
    cotangent = jnp.asarray(rng.standard_normal((b, q_len, heads, d)), jnp.float32)
    value, grads = _grads(softmax_attention, q, k, v, bias, mask, 0.37, cotangent)
    ref_value, ref_grads = _grads(plain_attention, q, k, v, bias, mask, 0.37, cotangent)
    np.testing.assert_allclose(value, ref_value, rtol=1e-5, atol=1e-5)
    for name, got, want in zip("qkvb", grads, ref_grads):
        assert got.shape == want.shape, name
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5, err_msg=f"d{name}")


def test_fully_masked_rows_get_no_score_gradient_but_feed_the_values():
    """A padding query attends to nothing: its output is the mean value, whose gradient
    reaches v but not q or k."""
    rng = np.random.default_rng(5)
    q = jnp.asarray(rng.standard_normal((1, 3, 2, 4)), jnp.float32)
    k, v = (jnp.asarray(rng.standard_normal((1, 3, 2, 4)), jnp.float32) for _ in range(2))
    mask = jnp.asarray(
        np.array([True, True, False])[None, None, :, None] & np.ones((1, 1, 3, 3), bool)
    )
    cotangent = jnp.zeros((1, 3, 2, 4)).at[:, 2].set(1.0)  # only the masked row is in the loss
    _, (dq, dk, dv) = _grads(softmax_attention, q, k, v, None, mask, 1.0, cotangent)
    np.testing.assert_array_equal(dq, 0.0)
    np.testing.assert_array_equal(dk, 0.0)
    np.testing.assert_allclose(dv, np.full((1, 3, 2, 4), 1.0 / 3.0), rtol=1e-6)


def test_bfloat16_gradients_keep_input_dtypes_and_track_float32():
    rng = np.random.default_rng(6)
    shape = (2, 5, 4, 8)
    q, k, v, ct = (rng.standard_normal(shape).astype(np.float32) for _ in range(4))
    bias = rng.standard_normal((1, 4, 5, 5)).astype(np.float32)
    as_bf16 = lambda x: jnp.asarray(x, jnp.bfloat16)  # noqa: E731
    _, low = _grads(softmax_attention, *map(as_bf16, (q, k, v, bias)), None, 0.5, as_bf16(ct))
    _, high = _grads(
        softmax_attention, *map(jnp.asarray, (q, k, v, bias)), None, 0.5, jnp.asarray(ct)
    )
    for got, want in zip(low, high):
        assert got.dtype == jnp.bfloat16
        np.testing.assert_allclose(np.asarray(got, np.float32), want, rtol=0.05, atol=0.05)
