"""Attention op and mask helpers against slow numpy references with explicit loops."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from t5x_rationale.architectures.attention import (
    causal_mask,
    combine_masks,
    dot_product_attention,
    padding_mask,
    segment_mask,
    sliding_window_mask,
)

RTOL = ATOL = 1e-5

# Jitted once per shape: eager dispatch compiles every primitive separately, which is slow on CPU.
attend = jax.jit(dot_product_attention, static_argnames=("scale", "implementation", "dropout_rate"))


# ------------------------------------------------------------------------ references


def reference_attention(q, k, v, *, bias=None, mask=None, scale=None):
    """Plain-loop attention in float64.

    q: [b, q_len, heads, d]; k, v: [b, k_len, kv_heads, d]. Query head h reads kv head
    h // (heads // kv_heads). bias / mask are broadcast to [b, heads, q_len, k_len]. Rows with
    no allowed key are returned as NaN (callers must not compare them).
    """
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    b, q_len, heads, d = q.shape
    k_len, kv_heads = k.shape[1], k.shape[2]
    group = heads // kv_heads
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    full = (b, heads, q_len, k_len)
    bias = np.zeros(full) if bias is None else np.broadcast_to(np.asarray(bias, np.float64), full)
    mask = np.ones(full, bool) if mask is None else np.broadcast_to(np.asarray(mask, bool), full)
    out = np.full((b, q_len, heads, d), np.nan)
    for bi in range(b):
        for h in range(heads):
            kvh = h // group
            for i in range(q_len):
                allowed = [j for j in range(k_len) if mask[bi, h, i, j]]
                if not allowed:
                    continue
                logits = {
                    j: scale * sum(q[bi, i, h, t] * k[bi, j, kvh, t] for t in range(d))
                    + bias[bi, h, i, j]
                    for j in allowed
                }
                m = max(logits.values())
                weights = {j: math.exp(s - m) for j, s in logits.items()}
                total = sum(weights.values())
                acc = np.zeros(d)
                for j in allowed:
                    acc += (weights[j] / total) * v[bi, j, kvh]
                out[bi, i, h] = acc
    return out


def loop_causal(qp, kp):
    b, ql = qp.shape
    kl = kp.shape[1]
    return np.array(
        [[[[kp[bi, j] <= qp[bi, i] for j in range(kl)] for i in range(ql)]] for bi in range(b)]
    )


def loop_segment(qs, ks):
    b, ql = qs.shape
    kl = ks.shape[1]
    return np.array(
        [
            [
                [
                    [
                        qs[bi, i] == ks[bi, j] and qs[bi, i] != 0 and ks[bi, j] != 0
                        for j in range(kl)
                    ]
                    for i in range(ql)
                ]
            ]
            for bi in range(b)
        ]
    )


def loop_padding(qv, kv):
    b, ql = qv.shape
    kl = kv.shape[1]
    return np.array(
        [
            [[[bool(qv[bi, i]) and bool(kv[bi, j]) for j in range(kl)] for i in range(ql)]]
            for bi in range(b)
        ]
    )


def loop_window(qp, kp, window):
    b, ql = qp.shape
    kl = kp.shape[1]
    return np.array(
        [
            [[[qp[bi, i] - kp[bi, j] < window for j in range(kl)] for i in range(ql)]]
            for bi in range(b)
        ]
    )


def _rand(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


# A packed batch: row 0 has segments 1 (len 4) and 2 (len 3) then 1 pad; row 1 one segment of 6
# then 2 pads.
SEG = np.array([[1, 1, 1, 1, 2, 2, 2, 0], [1, 1, 1, 1, 1, 1, 0, 0]], np.int32)
POS = np.array([[0, 1, 2, 3, 0, 1, 2, 0], [0, 1, 2, 3, 4, 5, 0, 0]], np.int32)


def _packed_mask():
    valid = SEG > 0
    return combine_masks(
        causal_mask(jnp.asarray(POS), jnp.asarray(POS)),
        segment_mask(jnp.asarray(SEG), jnp.asarray(SEG)),
        padding_mask(jnp.asarray(valid), jnp.asarray(valid)),
    )


# ----------------------------------------------------------------------------- masks


def test_causal_mask_matches_loop():
    qp = np.array([[0, 1, 2, 3, 4], [3, 0, 2, 1, 7]], np.int32)
    kp = np.array([[0, 1, 2, 3, 4, 5], [5, 4, 0, 1, 2, 3]], np.int32)
    got = np.asarray(causal_mask(jnp.asarray(qp), jnp.asarray(kp)))
    assert got.shape == (2, 1, 5, 6) and got.dtype == bool
    np.testing.assert_array_equal(got, loop_causal(qp, kp))


def test_segment_mask_matches_loop_and_excludes_padding():
    qs = np.array([[1, 1, 2, 2, 0], [3, 3, 3, 0, 0]], np.int32)
    ks = np.array([[1, 2, 2, 0, 0, 1], [3, 0, 3, 3, 1, 0]], np.int32)
    got = np.asarray(segment_mask(jnp.asarray(qs), jnp.asarray(ks)))
    assert got.shape == (2, 1, 5, 6)
    np.testing.assert_array_equal(got, loop_segment(qs, ks))
    # Padding (segment 0) never matches, not even itself.
    z = jnp.zeros((1, 3), jnp.int32)
    assert not np.asarray(segment_mask(z, z)).any()


def test_padding_mask_matches_loop():
    qv = np.array([[1, 1, 0], [0, 1, 1]], bool)
    kv = np.array([[1, 0, 1, 1], [1, 1, 0, 0]], bool)
    got = np.asarray(padding_mask(jnp.asarray(qv), jnp.asarray(kv)))
    assert got.shape == (2, 1, 3, 4)
    np.testing.assert_array_equal(got, loop_padding(qv, kv))


def test_sliding_window_mask_matches_loop():
    qp = np.arange(9, dtype=np.int32)[None].repeat(2, 0)
    qp[1] = [0, 1, 2, 0, 1, 2, 3, 4, 5]
    for window in (1, 2, 3, 9):
        got = np.asarray(sliding_window_mask(jnp.asarray(qp), jnp.asarray(qp), window))
        np.testing.assert_array_equal(got, loop_window(qp, qp, window))
        # Combined with causal: each query sees exactly min(window, pos + 1) keys of a plain
        # sequence.
        causal_window = got & np.asarray(causal_mask(jnp.asarray(qp), jnp.asarray(qp)))
        np.testing.assert_array_equal(
            causal_window[0, 0].sum(-1), np.minimum(window, np.arange(9) + 1)
        )


def test_combine_masks():
    rng = np.random.default_rng(0)
    a, b, c = (rng.random((2, 1, 4, 5)) > 0.4 for _ in range(3))
    got = np.asarray(combine_masks(jnp.asarray(a), None, jnp.asarray(b), jnp.asarray(c)))
    expected = np.array(
        [
            [
                [
                    [a[i, 0, q, k] and b[i, 0, q, k] and c[i, 0, q, k] for k in range(5)]
                    for q in range(4)
                ]
            ]
            for i in range(2)
        ]
    )
    np.testing.assert_array_equal(got, expected)
    assert combine_masks(None, None) is None
    assert combine_masks() is None
    np.testing.assert_array_equal(np.asarray(combine_masks(None, jnp.asarray(a))), a)


def test_packed_mask_matches_loops():
    valid = SEG > 0
    expected = loop_causal(POS, POS) & loop_segment(SEG, SEG) & loop_padding(valid, valid)
    np.testing.assert_array_equal(np.asarray(_packed_mask()), expected)
    # Sanity: token 4 of row 0 (start of segment 2) sees only itself.
    np.testing.assert_array_equal(expected[0, 0, 4], [0, 0, 0, 0, 1, 0, 0, 0])


# ------------------------------------------------------------------------- attention


@pytest.mark.parametrize("heads,kv_heads", [(8, 8), (8, 4), (8, 2), (8, 1)])
def test_attention_with_mask_bias_and_scale_matches_reference(heads, kv_heads):
    rng = np.random.default_rng(heads * 10 + kv_heads)
    b, length, d = 2, 8, 4
    q = _rand(rng, b, length, heads, d)
    k = _rand(rng, b, length, kv_heads, d)
    v = _rand(rng, b, length, kv_heads, d)
    bias = _rand(rng, b, heads, length, length)
    mask = np.asarray(_packed_mask())
    got = np.asarray(
        attend(
            jnp.asarray(q),
            jnp.asarray(k),
            jnp.asarray(v),
            bias=jnp.asarray(bias),
            mask=jnp.asarray(mask),
            scale=0.37,
        )
    )
    expected = reference_attention(q, k, v, bias=bias, mask=mask, scale=0.37)
    rows = SEG > 0  # padding query rows attend to nothing; their output is unspecified
    assert got.shape == (b, length, heads, d) and got.dtype == np.float32
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got[rows], expected[rows], rtol=RTOL, atol=ATOL)


def test_gqa_equals_mha_with_repeated_kv_heads():
    heads, kv_heads = 8, 2
    rng = np.random.default_rng(1)
    q = _rand(rng, 2, 5, heads, 4)
    k = _rand(rng, 2, 7, kv_heads, 4)
    v = _rand(rng, 2, 7, kv_heads, 4)
    gqa = attend(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v))
    rep = heads // kv_heads
    mha = attend(
        jnp.asarray(q),
        jnp.asarray(np.repeat(k, rep, axis=2)),
        jnp.asarray(np.repeat(v, rep, axis=2)),
    )
    np.testing.assert_allclose(np.asarray(gqa), np.asarray(mha), rtol=RTOL, atol=ATOL)


def test_default_scale_is_inverse_sqrt_head_dim_and_no_mask():
    rng = np.random.default_rng(2)
    q, k, v = _rand(rng, 1, 6, 4, 16), _rand(rng, 1, 9, 2, 16), _rand(rng, 1, 9, 2, 16)
    got = np.asarray(attend(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v)))
    np.testing.assert_allclose(got, reference_attention(q, k, v), rtol=RTOL, atol=ATOL)
    other = np.asarray(attend(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), scale=1.0))
    np.testing.assert_allclose(other, reference_attention(q, k, v, scale=1.0), rtol=RTOL, atol=ATOL)
    assert np.abs(other - got).max() > 1e-3


@pytest.mark.parametrize(
    "bias_shape,mask_shape",
    [
        ((1, 1, 5, 7), (2, 1, 5, 7)),  # shared bias, per-batch mask
        ((1, 8, 5, 7), (1, 1, 5, 7)),  # per-head bias (T5 relative bias), shared mask
        ((2, 8, 5, 7), (2, 8, 5, 7)),  # everything per batch and head
        ((2, 1, 1, 7), (2, 1, 1, 7)),  # key-only bias and mask (cross attention)
    ],
)
def test_broadcastable_bias_and_mask_shapes(bias_shape, mask_shape):
    rng = np.random.default_rng(3)
    q, k, v = _rand(rng, 2, 5, 8, 4), _rand(rng, 2, 7, 2, 4), _rand(rng, 2, 7, 2, 4)
    bias = _rand(rng, *bias_shape)
    mask = rng.random(mask_shape) > 0.3
    mask[..., 0] = True  # every row has at least one allowed key
    got = np.asarray(
        attend(
            jnp.asarray(q),
            jnp.asarray(k),
            jnp.asarray(v),
            bias=jnp.asarray(bias),
            mask=jnp.asarray(mask),
            scale=0.5,
        )
    )
    np.testing.assert_allclose(
        got, reference_attention(q, k, v, bias=bias, mask=mask, scale=0.5), rtol=RTOL, atol=ATOL
    )


def test_masked_keys_have_no_influence():
    rng = np.random.default_rng(4)
    q, k, v = _rand(rng, 1, 4, 2, 4), _rand(rng, 1, 6, 2, 4), _rand(rng, 1, 6, 2, 4)
    mask = np.ones((1, 1, 4, 6), bool)
    mask[..., 3:] = False
    out1 = attend(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), mask=jnp.asarray(mask))
    k2, v2 = k.copy(), v.copy()
    k2[:, 3:] = 1e3 * rng.standard_normal(k2[:, 3:].shape)
    v2[:, 3:] = 1e3
    out2 = attend(jnp.asarray(q), jnp.asarray(k2), jnp.asarray(v2), mask=jnp.asarray(mask))
    np.testing.assert_array_equal(np.asarray(out1), np.asarray(out2))


def test_bad_heads_ratio_raises():
    q = jnp.zeros((1, 3, 6, 4))
    kv = jnp.zeros((1, 3, 4, 4))
    with pytest.raises(ValueError, match="multiple"):
        attend(q, kv, kv)


def test_unknown_implementation_raises():
    x = jnp.zeros((1, 3, 2, 4))
    with pytest.raises(ValueError, match="unknown attention implementation"):
        dot_product_attention(x, x, x, implementation="flash")


@pytest.mark.skipif(jax.default_backend() == "gpu", reason="checks the non-GPU error path")
def test_cudnn_raises_clear_error_off_gpu():
    x = jnp.zeros((1, 3, 2, 4), jnp.bfloat16)
    with pytest.raises(ValueError, match="cudnn") as info:
        dot_product_attention(x, x, x, implementation="cudnn")
    assert jax.default_backend() in str(info.value)


@pytest.mark.skipif(jax.default_backend() == "gpu", reason="auto picks cuDNN on GPU for bf16")
def test_auto_falls_back_to_xla_off_gpu():
    # the case where 'auto' would pick cuDNN on a GPU; elsewhere it must be XLA
    dtype = jnp.bfloat16
    rng = np.random.default_rng(5)
    q, k, v = (jnp.asarray(_rand(rng, 2, 8, 8, 4), dtype) for _ in range(3))
    k, v = k[:, :, :2], v[:, :, :2]
    mask = _packed_mask()
    bias = jnp.asarray(_rand(rng, 1, 8, 8, 8), dtype)
    auto = attend(q, k, v, bias=bias, mask=mask, implementation="auto")
    xla = attend(q, k, v, bias=bias, mask=mask, implementation="xla")
    assert auto.dtype == dtype
    np.testing.assert_array_equal(
        np.asarray(auto.astype(jnp.float32)), np.asarray(xla.astype(jnp.float32))
    )


def test_dropout_is_deterministic_per_rng_off_without_rng_and_unbiased():
    rng = np.random.default_rng(6)
    q, k, v = (jnp.asarray(0.3 * _rand(rng, 1, 64, 4, 4)) for _ in range(3))

    @jax.jit
    def run(key, other_key):
        return (
            dot_product_attention(q, k, v),
            dot_product_attention(q, k, v, dropout_rate=0.5),  # no rng: no dropout
            dot_product_attention(q, k, v, dropout_rng=key, dropout_rate=0.5),
            dot_product_attention(q, k, v, dropout_rng=key, dropout_rate=0.5),
            dot_product_attention(q, k, v, dropout_rng=other_key, dropout_rate=0.5),
            dot_product_attention(q, k, jnp.ones_like(v), dropout_rng=key, dropout_rate=0.5),
        )

    plain, no_rng, d1, d2, d3, ones = (
        np.asarray(a) for a in run(jax.random.PRNGKey(0), jax.random.PRNGKey(1))
    )
    np.testing.assert_array_equal(no_rng, plain)
    np.testing.assert_array_equal(d1, d2)
    assert np.abs(d1 - plain).max() > 1e-3 and np.abs(d1 - d3).max() > 1e-3
    # With all-ones values each output is (sum of the kept probabilities) / (1 - p): between 0
    # and 2, and 1 on average (inverted dropout keeps the expectation). Over 256 rows of ~64
    # similar probabilities the mean's standard deviation is ~0.01.
    assert (ones >= 0).all() and (ones <= 2.0 + 1e-5).all()
    assert abs(ones.mean() - 1.0) < 0.05, ones.mean()
    assert ones.std() > 0.01  # really random per row
