"""Model code in t5x_rationale/architectures against hand-written numpy references.

The references are deliberately slow and explicit (python loops over batch, head, query and
key; float64), and read the same parameters as the Flax modules.
"""

from __future__ import annotations

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.core import meta
from random_params import random_params

from t5x_rationale.architectures import (
    DecoderConfig,
    DecoderOnly,
    EncoderDecoder,
    T5Config,
    build_model,
    dummy_batch,
    get_preset,
    model_inputs,
)
from t5x_rationale.architectures.position import (
    RelativePositionBias,
    apply_rope,
    relative_position_bucket,
    toeplitz,
)

RTOL = ATOL = 1e-5


# ================================================================== numpy references


def np_rms_norm(x, scale, eps):
    out = np.empty_like(x)
    for idx in np.ndindex(*x.shape[:-1]):
        row = x[idx]
        out[idx] = row / math.sqrt(sum(float(t) ** 2 for t in row) / row.size + eps) * scale
    return out


def np_gelu_tanh(x):
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def np_silu(x):
    return x / (1.0 + np.exp(-x))


def np_rope(x, positions, theta):
    """Rotate-half RoPE with an explicit loop over (batch, position, head, frequency)."""
    x = np.asarray(x, np.float64)
    b, length, heads, d = x.shape
    half = d // 2
    out = np.empty_like(x)
    for bi in range(b):
        for t in range(length):
            p = float(positions[bi, t])
            for h in range(heads):
                for i in range(half):
                    # HF: inv_freq = 1 / theta^(arange(0, d, 2) / d)
                    angle = p / theta ** (2.0 * i / d)
                    c, s = math.cos(angle), math.sin(angle)
                    x1, x2 = x[bi, t, h, i], x[bi, t, h, i + half]
                    out[bi, t, h, i] = x1 * c - x2 * s
                    out[bi, t, h, i + half] = x2 * c + x1 * s
    return out


def t5_bucket(rel, bidirectional, num_buckets, max_distance):
    """T5's relative_position_bucket for one python int (mesh_tensorflow / HF formula)."""
    ret = 0
    n = -rel
    if bidirectional:
        num_buckets //= 2
        if n < 0:
            ret += num_buckets
        n = abs(n)
    else:
        n = max(n, 0)
    max_exact = num_buckets // 2
    if n < max_exact:
        return ret + n
    large = max_exact + int(
        math.log(n / max_exact) / math.log(max_distance / max_exact) * (num_buckets - max_exact)
    )
    return ret + min(large, num_buckets - 1)


def np_attention(q, k, v, allowed, bias, scale):
    """q [b, lq, H, d], k/v [b, lk, K, d]; allowed(b, h, i, j) -> bool; bias [b, H, lq, lk] or None.

    Query head h reads kv head h // (H // K). Rows with no allowed key give NaN.
    """
    b, lq, heads, d = q.shape
    lk, kv_heads = k.shape[1], k.shape[2]
    group = heads // kv_heads
    out = np.full((b, lq, heads, d), np.nan)
    for bi in range(b):
        for h in range(heads):
            kvh = h // group
            for i in range(lq):
                keys = [j for j in range(lk) if allowed(bi, h, i, j)]
                if not keys:
                    continue
                s = np.array(
                    [
                        scale * float(np.dot(q[bi, i, h], k[bi, j, kvh]))
                        + (0.0 if bias is None else bias[bi, h, i, j])
                        for j in keys
                    ]
                )
                w = np.exp(s - s.max())
                w /= w.sum()
                out[bi, i, h] = sum(wj * v[bi, j, kvh] for wj, j in zip(w, keys))
    return out


def np_mha(p, xq, xkv, allowed, *, bias=None, scale, q_pos=None, k_pos=None, theta=None):
    q = np.einsum("bld,dhk->blhk", xq, p["query"]["kernel"])
    k = np.einsum("bld,dhk->blhk", xkv, p["key"]["kernel"])
    v = np.einsum("bld,dhk->blhk", xkv, p["value"]["kernel"])
    if theta is not None:
        q, k = np_rope(q, q_pos, theta), np_rope(k, k_pos, theta)
    o = np_attention(q, k, v, allowed, bias, scale)
    return np.einsum("blhk,hkd->bld", o, p["out"]["kernel"])


def np_mlp(p, x, act):
    h = act(x @ p["wi_0"]["kernel"]) * (x @ p["wi_1"]["kernel"])
    return h @ p["wo"]["kernel"]


def np_t5_forward(
    params,
    c: T5Config,
    enc_tokens,
    dec_tokens,
    enc_seg=None,
    dec_seg=None,
    enc_pos=None,
    dec_pos=None,
):
    """T5 v1.1: pre-RMSNorm, no 1/sqrt(d) scaling, shared relative bias, gated-GELU."""
    p = to_f64(params)
    emb = p["token_embedder"]["embedding"]
    b, le = enc_tokens.shape
    ld = dec_tokens.shape[1]
    enc_pos = np.tile(np.arange(le), (b, 1)) if enc_pos is None else enc_pos
    dec_pos = np.tile(np.arange(ld), (b, 1)) if dec_pos is None else dec_pos
    enc_valid = enc_tokens > 0 if enc_seg is None else enc_seg > 0
    eps = c.layer_norm_epsilon

    def rel_bias(table, qp, kp, bidirectional):
        out = np.zeros((b, c.num_heads, qp.shape[1], kp.shape[1]))
        for bi in range(b):
            for h in range(c.num_heads):
                for i in range(qp.shape[1]):
                    for j in range(kp.shape[1]):
                        bucket = t5_bucket(
                            int(kp[bi, j] - qp[bi, i]),
                            bidirectional,
                            c.relative_attention_num_buckets,
                            c.relative_attention_max_distance,
                        )
                        out[bi, h, i, j] = table[h, bucket]
        return out

    # Encoder.
    e = p["encoder"]
    enc_bias = rel_bias(e["relpos_bias"]["rel_embedding"], enc_pos, enc_pos, True)

    def enc_allowed(bi, h, i, j):
        ok = enc_valid[bi, i] and enc_valid[bi, j]
        return ok and (enc_seg is None or enc_seg[bi, i] == enc_seg[bi, j])

    x = emb[enc_tokens]
    for li in range(c.num_encoder_layers):
        lp = e[f"layers_{li}"]
        h = np_rms_norm(x, lp["pre_attention_layer_norm"]["scale"], eps)
        x = x + np_mha(lp["attention"], h, h, enc_allowed, bias=enc_bias, scale=1.0)
        x = x + np_mlp(
            lp["mlp"], np_rms_norm(x, lp["pre_mlp_layer_norm"]["scale"], eps), np_gelu_tanh
        )
    encoded = np_rms_norm(x, e["encoder_norm"]["scale"], eps)

    # Decoder.
    d = p["decoder"]
    dec_bias = rel_bias(d["relpos_bias"]["rel_embedding"], dec_pos, dec_pos, False)

    def self_allowed(bi, h, i, j):
        ok = dec_pos[bi, j] <= dec_pos[bi, i]
        return ok and (dec_seg is None or (dec_seg[bi, i] == dec_seg[bi, j] and dec_seg[bi, i] > 0))

    def cross_allowed(bi, h, i, j):
        if enc_seg is not None and dec_seg is not None:
            return dec_seg[bi, i] == enc_seg[bi, j] and enc_seg[bi, j] > 0
        return bool(enc_valid[bi, j])

    y = emb[dec_tokens]
    for li in range(c.num_decoder_layers):
        lp = d[f"layers_{li}"]
        h = np_rms_norm(y, lp["pre_self_attention_layer_norm"]["scale"], eps)
        y = y + np_mha(lp["self_attention"], h, h, self_allowed, bias=dec_bias, scale=1.0)
        h = np_rms_norm(y, lp["pre_cross_attention_layer_norm"]["scale"], eps)
        y = y + np_mha(lp["encoder_decoder_attention"], h, encoded, cross_allowed, scale=1.0)
        y = y + np_mlp(
            lp["mlp"], np_rms_norm(y, lp["pre_mlp_layer_norm"]["scale"], eps), np_gelu_tanh
        )
    y = np_rms_norm(y, d["decoder_norm"]["scale"], eps)
    if c.logits_via_embedding:
        return encoded, (y / math.sqrt(c.emb_dim)) @ emb.T
    return encoded, y @ d["logits_dense"]["kernel"]


def np_llama_forward(params, c: DecoderConfig, tokens, *, allowed=None, positions=None):
    """Llama: pre-RMSNorm, RoPE, GQA scaled by 1/sqrt(d), SwiGLU. `allowed(b, i, j)` defaults to
    causal."""
    p = to_f64(params)
    emb = p["token_embedder"]["embedding"]
    b, length = tokens.shape
    positions = np.tile(np.arange(length), (b, 1)) if positions is None else positions
    allowed = allowed or (lambda bi, i, j: j <= i)
    eps = c.layer_norm_epsilon
    x = emb[tokens]
    d = p["decoder"]
    for li in range(c.num_layers):
        lp = d[f"layers_{li}"]
        h = np_rms_norm(x, lp["pre_self_attention_layer_norm"]["scale"], eps)
        x = x + np_mha(
            lp["self_attention"],
            h,
            h,
            lambda bi, hh, i, j: allowed(bi, i, j),
            scale=1.0 / math.sqrt(c.head_dim),
            q_pos=positions,
            k_pos=positions,
            theta=c.rope_theta,
        )
        x = x + np_mlp(lp["mlp"], np_rms_norm(x, lp["pre_mlp_layer_norm"]["scale"], eps), np_silu)
    x = np_rms_norm(x, d["decoder_norm"]["scale"], eps)
    return x @ (emb.T if c.tie_embeddings else d["logits_dense"]["kernel"])


# ======================================================================== helpers


def to_f64(tree):
    return jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), tree)


@functools.lru_cache(maxsize=None)
def jitted_apply(model):
    return jax.jit(lambda params, kwargs: model.apply({"params": params}, **kwargs))


def logits_of(model, params, **inputs):
    inputs = {k: jnp.asarray(v) for k, v in inputs.items()}
    return np.asarray(jitted_apply(model)(params, inputs))


def stack_layers(tree):
    """Unrolled `layers_{i}` subtrees -> one `layers` subtree with a leading layer axis."""
    if not isinstance(tree, dict):
        return tree
    out = {k: stack_layers(v) for k, v in tree.items() if not k.startswith("layers_")}
    layer_keys = sorted(
        (k for k in tree if k.startswith("layers_")), key=lambda k: int(k.split("_")[1])
    )
    if layer_keys:
        out["layers"] = jax.tree_util.tree_map(
            lambda *xs: jnp.stack(xs), *[tree[k] for k in layer_keys]
        )
    return out


def assert_close_to_scale(actual, desired, err_msg=""):
    """Elementwise |a - b| <= 1e-5 * max|b| over the tensor.

    Used for gradients: a gradient entry is a sum of many terms of the tensor's typical size
    and can cancel to near zero, so float32 reassociation (scan vs unrolled, recomputation)
    legitimately moves such an entry by ~1e-7 of the terms; a plain elementwise rtol would
    flag that roundoff, while any real difference shows up at the scale of the tensor.
    """
    actual, desired = np.asarray(actual), np.asarray(desired)
    assert actual.shape == desired.shape, err_msg
    scale = max(float(np.abs(desired).max()), 1e-30)
    np.testing.assert_allclose(actual, desired, rtol=0, atol=1e-5 * scale, err_msg=err_msg)


def random_tokens(rng, shape, vocab):
    return rng.integers(1, vocab, size=shape).astype(np.int32)


T5_ONE = dict(num_encoder_layers=1, num_decoder_layers=1)


# ============================================================================ position

_rope = jax.jit(apply_rope, static_argnums=2)
_bucket = jax.jit(
    relative_position_bucket, static_argnames=("bidirectional", "num_buckets", "max_distance")
)


def test_apply_rope_matches_numpy_loop():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 7, 3, 8)).astype(np.float32)
    positions = np.array([[0, 1, 2, 3, 4, 5, 6], [5, 0, 17, 3, 3, 30, 11]], np.int32)
    for theta in (10000.0, 500.0):
        got = np.asarray(_rope(jnp.asarray(x), jnp.asarray(positions), theta))
        np.testing.assert_allclose(got, np_rope(x, positions, theta), rtol=RTOL, atol=ATOL)
    # Position 0 is the identity.
    zero = np.asarray(_rope(jnp.asarray(x), jnp.zeros((2, 7), jnp.int32), 10000.0))
    np.testing.assert_array_equal(zero, x)


def test_apply_rope_preserves_norm_and_dot_products_depend_on_relative_position():
    rng = np.random.default_rng(1)
    q = rng.standard_normal((1, 1, 2, 16)).astype(np.float32)
    k = rng.standard_normal((1, 1, 2, 16)).astype(np.float32)

    def rot(x, pos):
        return np.asarray(
            _rope(jnp.asarray(x), jnp.full((1, 1), pos, jnp.int32), 10000.0), np.float64
        )

    for pos in (0, 3, 25):
        np.testing.assert_allclose(
            np.linalg.norm(rot(q, pos), axis=-1), np.linalg.norm(q, axis=-1), rtol=RTOL, atol=ATOL
        )
    for m, n in [(5, 2), (2, 5), (7, 7)]:
        base = np.sum(rot(q, m) * rot(k, n), axis=-1)
        for shift in (1, 4, 13):
            np.testing.assert_allclose(
                np.sum(rot(q, m + shift) * rot(k, n + shift), axis=-1), base, rtol=RTOL, atol=ATOL
            )
    # ...and does depend on it.
    assert (
        np.abs(np.sum(rot(q, 5) * rot(k, 2), -1) - np.sum(rot(q, 5) * rot(k, 3), -1)).max() > 1e-3
    )


@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize("num_buckets,max_distance", [(32, 128), (16, 32), (8, 20), (64, 256)])
def test_relative_position_bucket_matches_scalar_reference(
    bidirectional, num_buckets, max_distance
):
    rel = np.arange(-300, 301, dtype=np.int32)
    got = np.asarray(
        _bucket(
            jnp.asarray(rel),
            bidirectional=bidirectional,
            num_buckets=num_buckets,
            max_distance=max_distance,
        )
    )
    expected = np.array([t5_bucket(int(r), bidirectional, num_buckets, max_distance) for r in rel])
    np.testing.assert_array_equal(got, expected)
    assert got.min() >= 0 and got.max() == num_buckets - 1


def test_relative_position_bucket_known_t5_values():
    # T5 default (32 buckets, max distance 128), bidirectional: key before the query -> low
    # half, key after -> high half; exact up to 7, then log-spaced, then saturated.
    rel = np.asarray([0, -1, -7, -8, -16, -127, -1000, 1, 7, 8, 1000], np.int32)
    got = _bucket(jnp.asarray(rel), bidirectional=True, num_buckets=32, max_distance=128)
    np.testing.assert_array_equal(np.asarray(got), [0, 1, 7, 8, 10, 15, 15, 17, 23, 24, 31])
    # Causal: keys after the query all share bucket 0.
    rel = np.asarray([3, 1, 0, -1, -15, -16, -500], np.int32)
    got = _bucket(jnp.asarray(rel), bidirectional=False, num_buckets=32, max_distance=128)
    np.testing.assert_array_equal(np.asarray(got), [0, 0, 0, 1, 15, 16, 31])


def test_toeplitz_matches_loop_and_checks_its_width():
    rng = np.random.default_rng(3)
    length = 6
    diagonals = rng.standard_normal((2, 3, 2 * length - 1)).astype(np.float32)
    got = np.asarray(jax.jit(toeplitz, static_argnums=1)(jnp.asarray(diagonals), length))
    expected = np.array(
        [
            [
                [
                    [diagonals[a, b, j - i + length - 1] for j in range(length)]
                    for i in range(length)
                ]
                for b in range(3)
            ]
            for a in range(2)
        ]
    )
    np.testing.assert_array_equal(got, expected)
    with pytest.raises(ValueError, match="needs 11 diagonals"):
        toeplitz(jnp.zeros((2, 10)), length)


@pytest.mark.parametrize("bidirectional", [True, False])
def test_relative_bias_from_diagonals_equals_bucket_lookup_with_gradient(bidirectional):
    """`for_length` (diagonals, used when positions are 0..L-1) against the general path."""
    length = 40  # past max_distance, so the log-spaced and saturated buckets appear
    module = RelativePositionBias(
        num_buckets=16, max_distance=24, num_heads=3, bidirectional=bidirectional
    )
    positions = jnp.arange(length)[None]
    params = meta.unbox(module.init(jax.random.PRNGKey(0), positions, positions))
    cotangent = jnp.asarray(
        np.random.default_rng(4).standard_normal((1, 3, length, length)), jnp.float32
    )

    def bias_and_grad(method):
        def loss(p):
            bias = (
                module.apply(p, length, method="for_length")
                if method
                else module.apply(p, positions, positions)
            )
            return jnp.sum(bias * cotangent), bias

        (_, bias), grad = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
        return bias, grad["params"]["rel_embedding"]

    fast_bias, fast_grad = bias_and_grad(True)
    ref_bias, ref_grad = bias_and_grad(False)
    np.testing.assert_array_equal(fast_bias, ref_bias)
    np.testing.assert_allclose(fast_grad, ref_grad, rtol=1e-5, atol=1e-4)
    # Every bucket a distance reaches gets a gradient (bidirectional never uses bucket 8:
    # distance 0 is in the lower half).
    used = (np.abs(np.asarray(ref_grad)) > 0).all(axis=0).sum()
    assert used == (15 if bidirectional else 16)


# ================================================================ full forward vs numpy


def test_t5_forward_matches_numpy():
    c = get_preset("t5-tiny", **T5_ONE)
    model = build_model(c)
    assert isinstance(model, EncoderDecoder)
    rng = np.random.default_rng(2)
    enc = random_tokens(rng, (2, 6), c.vocab_size)
    enc[0, 4:] = 0  # encoder padding
    dec = random_tokens(rng, (2, 5), c.vocab_size)
    dec[1, 3:] = 0
    params = random_params(
        model, **model_inputs(dummy_batch(c, 2, target_length=5, input_length=6))
    )
    encode_and_call = jax.jit(
        lambda p, e, d: model.apply(
            {"params": p}, e, d, method=lambda m, e, d: (m.encode(e), m(e, d))
        )
    )
    encoded, got = (
        np.asarray(a) for a in encode_and_call(params, jnp.asarray(enc), jnp.asarray(dec))
    )
    ref_encoded, ref_logits = np_t5_forward(params, c, enc, dec)
    assert got.shape == (2, 5, c.vocab_size) and got.dtype == np.float32
    np.testing.assert_allclose(got, ref_logits, rtol=RTOL, atol=ATOL)
    valid = enc > 0  # padded encoder positions attend to nothing and are never attended to
    np.testing.assert_allclose(encoded[valid], ref_encoded[valid], rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize(
    "overrides",
    [
        dict(num_layers=1),  # 8 heads / 4 kv heads
        # 8 / 2, tied output
        dict(num_layers=1, num_kv_heads=2, rope_theta=100.0, tie_embeddings=True),
    ],
)
def test_decoder_forward_matches_numpy(overrides):
    c = get_preset("decoder-tiny", **overrides)
    model = build_model(c)
    assert isinstance(model, DecoderOnly)
    rng = np.random.default_rng(3)
    tokens = random_tokens(rng, (2, 7), c.vocab_size)
    params = random_params(model, **model_inputs(dummy_batch(c, 2, target_length=7)))
    got = logits_of(model, params, decoder_input_tokens=tokens)
    assert got.shape == (2, 7, c.vocab_size) and got.dtype == np.float32
    np.testing.assert_allclose(got, np_llama_forward(params, c, tokens), rtol=RTOL, atol=ATOL)


def test_decoder_sliding_window_matches_reference_mask():
    window = 3
    c = get_preset("decoder-tiny", num_layers=1, sliding_window=window)
    model = build_model(c)
    rng = np.random.default_rng(4)
    tokens = random_tokens(rng, (2, 9), c.vocab_size)
    params = random_params(model, decoder_input_tokens=tokens)
    got = logits_of(model, params, decoder_input_tokens=tokens)
    expected = np_llama_forward(params, c, tokens, allowed=lambda bi, i, j: i - window < j <= i)
    np.testing.assert_allclose(got, expected, rtol=RTOL, atol=ATOL)
    # The window matters: plain causal attention agrees up to the window, then differs.
    causal = np_llama_forward(params, c, tokens)
    np.testing.assert_allclose(got[:, :window], causal[:, :window], rtol=RTOL, atol=ATOL)
    assert np.abs(got[:, window:] - causal[:, window:]).max() > 1e-3


def test_prefix_lm_attention():
    prefix, length = 4, 8
    c = get_preset("decoder-tiny", num_layers=1)
    model = build_model(c)
    rng = np.random.default_rng(5)
    tokens = random_tokens(rng, (1, length), c.vocab_size)
    later_prefix = tokens.copy()  # the last prefix token changed
    later_prefix[:, prefix - 1] = tokens[:, prefix - 1] % (c.vocab_size - 1) + 1
    suffix = tokens.copy()  # every token after the prefix changed
    suffix[:, prefix:] = tokens[:, prefix:] % (c.vocab_size - 1) + 1
    batch = np.concatenate([tokens, later_prefix, suffix])
    causal_attention = np.zeros((3, length), np.int32)
    causal_attention[:, :prefix] = 1  # T5X convention: 1 on the (bidirectional) prefix
    params = random_params(model, decoder_input_tokens=batch)
    base, after_prefix_change, after_suffix_change = logits_of(
        model, params, decoder_input_tokens=batch, decoder_causal_attention=causal_attention
    )
    expected = np_llama_forward(
        params, c, tokens, allowed=lambda bi, i, j: j <= i or (i < prefix and j < prefix)
    )[0]
    np.testing.assert_allclose(base, expected, rtol=RTOL, atol=ATOL)
    # A later prefix token changes the logits of earlier prefix positions (bidirectional)...
    assert np.abs(after_prefix_change[0] - base[0]).max() > 1e-3
    # ...but tokens after the prefix never reach prefix positions.
    np.testing.assert_allclose(after_suffix_change[:prefix], base[:prefix], rtol=RTOL, atol=ATOL)
    assert np.abs(after_suffix_change[prefix:] - base[prefix:]).max() > 1e-3
    # Plain causal attention differs at the start of the prefix (position 0 sees only itself).
    causal = np_llama_forward(params, c, tokens)[0]
    assert np.abs(causal[0] - base[0]).max() > 1e-3


# =============================================================== scan / remat equivalence


def _t5_inputs(rng, c):
    enc = random_tokens(rng, (2, 6), c.vocab_size)
    enc[1, 5:] = 0
    return dict(
        encoder_input_tokens=enc, decoder_input_tokens=random_tokens(rng, (2, 5), c.vocab_size)
    )


def _decoder_inputs(rng, c):
    return dict(decoder_input_tokens=random_tokens(rng, (2, 6), c.vocab_size))


CASES = {"t5": ("t5-tiny", _t5_inputs), "decoder": ("decoder-tiny", _decoder_inputs)}


@pytest.mark.parametrize("arch,remat_policy", [("t5", "none"), ("decoder", "dots_no_batch")])
def test_scan_layers_matches_unrolled(arch, remat_policy):
    """Scanned params are the unrolled ones stacked on a leading axis; logits are the same.

    The unrolled logits come from the numpy reference on the unrolled params (checked against
    the unrolled modules above), which saves compiling the unrolled 2-layer model here.
    """
    preset, make_inputs = CASES[arch]
    unrolled = build_model(get_preset(preset))
    scanned = build_model(get_preset(preset, scan_layers=True, remat_policy=remat_policy))
    inputs = make_inputs(np.random.default_rng(6), unrolled.config)
    params = random_params(unrolled, **inputs)
    assert "layers_1" in str(jax.tree_util.tree_structure(params))
    stacked = stack_layers(params)
    # The scanned model's own params have exactly this structure and these shapes.
    scanned_shapes = jax.tree_util.tree_map(
        jnp.shape,
        meta.unbox(
            jax.eval_shape(
                scanned.init,
                jax.random.PRNGKey(0),
                **{k: jnp.asarray(v) for k, v in inputs.items()},
            )["params"]
        ),
    )
    assert jax.tree_util.tree_map(jnp.shape, stacked) == scanned_shapes
    if arch == "t5":
        _, want = np_t5_forward(
            params, unrolled.config, inputs["encoder_input_tokens"], inputs["decoder_input_tokens"]
        )
    else:
        want = np_llama_forward(params, unrolled.config, inputs["decoder_input_tokens"])
    np.testing.assert_allclose(logits_of(scanned, stacked, **inputs), want, rtol=RTOL, atol=ATOL)
    # Layer order matters: reversing the stack changes the logits.
    reversed_stack = stack_layers({**params, **{k: _reverse_layers(v) for k, v in params.items()}})
    assert np.abs(logits_of(scanned, reversed_stack, **inputs) - want).max() > 1e-3


def _reverse_layers(tree):
    if not isinstance(tree, dict):
        return tree
    names = sorted((k for k in tree if k.startswith("layers_")), key=lambda k: int(k.split("_")[1]))
    renamed = dict(zip(names, reversed(names)))
    return {renamed.get(k, k): v for k, v in tree.items()}


def test_remat_policies_match_no_remat():
    """Logits and parameter gradients under every remat policy equal those without remat."""
    policies = ("full", "dots", "dots_no_batch")
    models = [
        build_model(get_preset("decoder-tiny", num_layers=1, remat_policy=p))
        for p in ("none",) + policies
    ]
    inputs = {
        k: jnp.asarray(v)
        for k, v in _decoder_inputs(np.random.default_rng(7), models[0].config).items()
    }
    params = random_params(models[0], **inputs)
    weights = jnp.asarray(
        np.random.default_rng(8).standard_normal((2, 6, models[0].config.vocab_size)), jnp.float32
    )

    def logits_and_grads(model, p):
        def loss(p):
            logits = model.apply({"params": p}, **inputs)
            return jnp.sum(logits * weights), logits

        (_, logits), grads = jax.value_and_grad(loss, has_aux=True)(p)
        return logits, grads

    (ref_logits, ref_grads), *others = jax.jit(lambda p: [logits_and_grads(m, p) for m in models])(
        params
    )
    assert max(float(jnp.abs(g).max()) for g in jax.tree_util.tree_leaves(ref_grads)) > 1e-3
    for policy, (logits, grads) in zip(policies, others):
        np.testing.assert_allclose(logits, ref_logits, rtol=RTOL, atol=ATOL, err_msg=policy)
        assert jax.tree_util.tree_structure(grads) == jax.tree_util.tree_structure(ref_grads), (
            policy
        )
        jax.tree_util.tree_map(
            lambda a, b: assert_close_to_scale(a, b, err_msg=policy), grads, ref_grads
        )


# ============================================================================= packing


def test_decoder_packing_matches_separate_sequences():
    c = get_preset("decoder-tiny", num_layers=1)
    model = build_model(c)
    rng = np.random.default_rng(11)
    a, b = random_tokens(rng, (5,), c.vocab_size), random_tokens(rng, (4,), c.vocab_size)
    pad = lambda x: np.pad(x, (0, 12 - len(x)))  # noqa: E731
    packed = np.concatenate([a, b, np.zeros(3, np.int32)])[None]
    seg = np.array([[1] * 5 + [2] * 4 + [0] * 3], np.int32)
    pos = np.array([list(range(5)) + list(range(4)) + [0] * 3], np.int32)
    params = random_params(model, decoder_input_tokens=packed)
    got = logits_of(
        model, params, decoder_input_tokens=packed, decoder_segment_ids=seg, decoder_positions=pos
    )[0]
    # Unpacked runs (plain causal path, no segment ids): a alone, b alone, and the packed row
    # without segment ids, all in one batch.
    unpacked = np.stack([pad(a), pad(b), packed[0]])
    positions = np.stack([np.arange(12), np.arange(12), pos[0]]).astype(np.int32)
    alone_a, alone_b, leaky = logits_of(
        model, params, decoder_input_tokens=unpacked, decoder_positions=positions
    )
    np.testing.assert_allclose(got[:5], alone_a[:5], rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(got[5:9], alone_b[:4], rtol=RTOL, atol=ATOL)
    # Without segment ids the second segment sees the first.
    assert np.abs(leaky[5:9] - alone_b[:4]).max() > 1e-3


def test_decoder_packing_with_prefix_lm_and_sliding_window_matches_numpy():
    c = get_preset("decoder-tiny", num_layers=1, sliding_window=3)
    model = build_model(c)
    rng = np.random.default_rng(12)
    tokens = random_tokens(rng, (2, 9), c.vocab_size)
    seg = np.array([[1, 1, 1, 1, 1, 2, 2, 2, 2], [1, 1, 1, 1, 1, 1, 1, 0, 0]], np.int32)
    # Row 1 has explicit positions with gaps: RoPE and the window must use them, not the index.
    pos = np.array([[0, 1, 2, 3, 4, 0, 1, 2, 3], [0, 1, 2, 5, 6, 7, 10, 0, 0]], np.int32)
    prefix = np.array([[1, 1, 0, 0, 0, 1, 1, 1, 0], [1, 1, 1, 1, 0, 0, 0, 0, 0]], np.int32)
    params = random_params(model, decoder_input_tokens=tokens)
    got = logits_of(
        model,
        params,
        decoder_input_tokens=tokens,
        decoder_segment_ids=seg,
        decoder_positions=pos,
        decoder_causal_attention=prefix,
    )

    def allowed(bi, i, j):
        if seg[bi, i] == 0 or seg[bi, i] != seg[bi, j]:
            return False
        visible = pos[bi, j] <= pos[bi, i] or (prefix[bi, i] and prefix[bi, j])
        return bool(visible) and pos[bi, i] - pos[bi, j] < 3

    expected = np_llama_forward(params, c, tokens, allowed=allowed, positions=pos)
    valid = seg > 0
    np.testing.assert_allclose(got[valid], expected[valid], rtol=RTOL, atol=ATOL)


def test_t5_packing_matches_numpy_and_separate_examples():
    # also covers the tied output layer
    c = get_preset("t5-tiny", **T5_ONE, logits_via_embedding=True)
    model = build_model(c)
    rng = np.random.default_rng(13)
    # Row 0 packs example a (4 inputs, 3 targets) and b (3 inputs, 4 targets); row 1 is one
    # example with padding.
    ea, eb = random_tokens(rng, (4,), c.vocab_size), random_tokens(rng, (3,), c.vocab_size)
    da, db = random_tokens(rng, (3,), c.vocab_size), random_tokens(rng, (4,), c.vocab_size)
    enc = np.stack(
        [
            np.concatenate([ea, eb, [0]]),
            np.concatenate([random_tokens(rng, (5,), c.vocab_size), [0] * 3]),
        ]
    )
    dec = np.stack(
        [
            np.concatenate([da, db, [0, 0]]),
            np.concatenate([random_tokens(rng, (6,), c.vocab_size), [0] * 3]),
        ]
    )
    enc_seg = np.array([[1, 1, 1, 1, 2, 2, 2, 0], [1, 1, 1, 1, 1, 0, 0, 0]], np.int32)
    dec_seg = np.array([[1, 1, 1, 2, 2, 2, 2, 0, 0], [1, 1, 1, 1, 1, 1, 0, 0, 0]], np.int32)
    enc_pos = np.array([[0, 1, 2, 3, 0, 1, 2, 0], [0, 1, 2, 3, 4, 0, 0, 0]], np.int32)
    dec_pos = np.array([[0, 1, 2, 0, 1, 2, 3, 0, 0], [0, 1, 2, 3, 4, 5, 0, 0, 0]], np.int32)
    enc, dec = enc.astype(np.int32), dec.astype(np.int32)
    params = random_params(model, encoder_input_tokens=enc, decoder_input_tokens=dec)
    got = logits_of(
        model,
        params,
        encoder_input_tokens=enc,
        decoder_input_tokens=dec,
        encoder_segment_ids=enc_seg,
        decoder_segment_ids=dec_seg,
        encoder_positions=enc_pos,
        decoder_positions=dec_pos,
    )
    _, expected = np_t5_forward(params, c, enc, dec, enc_seg, dec_seg, enc_pos, dec_pos)
    valid = dec_seg > 0
    np.testing.assert_allclose(got[valid], expected[valid], rtol=RTOL, atol=ATOL)
    # Each packed example equals the example run alone (unpacked path: padding masks only).
    pad = lambda x, n: np.pad(x, (0, n - len(x))).astype(np.int32)  # noqa: E731
    alone_a, alone_b = logits_of(
        model,
        params,
        encoder_input_tokens=np.stack([pad(ea, 8), pad(eb, 8)]),
        decoder_input_tokens=np.stack([pad(da, 9), pad(db, 9)]),
    )
    np.testing.assert_allclose(got[0, :3], alone_a[:3], rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(got[0, 3:7], alone_b[:4], rtol=RTOL, atol=ATOL)
    # Sanity: the examples really differ, so the check above could fail.
    assert np.abs(alone_b[:3] - got[0, :3]).max() > 1e-3


# ================================================================ params, presets, configs


@pytest.mark.parametrize(
    "preset,scan",
    [("t5-tiny", False), ("t5-tiny", True), ("decoder-tiny", False), ("decoder-tiny", True)],
)
def test_every_param_has_logical_axis_names(preset, scan):
    c = get_preset(preset, scan_layers=scan)
    model = build_model(c)
    batch = model_inputs(dummy_batch(c, 2, target_length=4, input_length=3))
    params = jax.eval_shape(model.init, jax.random.PRNGKey(0), **batch)["params"]
    leaves = jax.tree_util.tree_leaves_with_path(
        params, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned)
    )
    assert leaves
    for path, leaf in leaves:
        name = jax.tree_util.keystr(path)
        assert isinstance(leaf, nn.LogicallyPartitioned), name
        assert len(leaf.names) == leaf.value.ndim, (name, leaf.names, leaf.value.shape)
        assert all(isinstance(n, str) for n in leaf.names), (name, leaf.names)
        if scan and "layers" in name and "layers_" not in name:
            assert leaf.names[0] == "layers", (name, leaf.names)


def test_model_inputs_and_dummy_batch():
    t5 = get_preset("t5-tiny")
    batch = dummy_batch(t5, 3, target_length=5, input_length=4)
    assert batch["encoder_input_tokens"].shape == (3, 4)
    assert batch["decoder_input_tokens"].shape == (3, 5)
    assert set(model_inputs(batch)) == {"encoder_input_tokens", "decoder_input_tokens"}
    with pytest.raises(ValueError, match="input_length"):
        dummy_batch(t5, 1, target_length=4)
    dec = dummy_batch(get_preset("decoder-tiny"), 2, target_length=6)
    assert "encoder_input_tokens" not in dec and set(model_inputs(dec)) == {"decoder_input_tokens"}
    with pytest.raises(TypeError):
        build_model(object())


def test_get_preset_errors_name_the_problem():
    with pytest.raises(ValueError, match="t5-nonexistent"):
        get_preset("t5-nonexistent")
    with pytest.raises(ValueError, match="num_layerz"):
        get_preset("decoder-tiny", num_layerz=3)
    with pytest.raises(ValueError, match="num_layers"):  # decoder field on a T5 preset
        get_preset("t5-tiny", num_layers=3)
    c = get_preset("decoder-tiny", num_layers=3, dtype="bfloat16")
    assert c.num_layers == 3 and c.dtype == "bfloat16" and c.num_kv_heads == 4
    assert get_preset("decoder-tiny").num_layers == 2  # the preset itself is untouched


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda: get_preset("decoder-tiny", num_heads=8, num_kv_heads=3), "multiple"),
        (lambda: get_preset("decoder-tiny", head_dim=7), "even head_dim"),
        (lambda: get_preset("decoder-tiny", sliding_window=0), "sliding_window"),
        (lambda: get_preset("decoder-tiny", num_layers=0), "num_layers"),
        (lambda: get_preset("decoder-tiny", emb_dim=0), "emb_dim"),
        (lambda: get_preset("decoder-tiny", dropout_rate=1.0), "dropout_rate"),
        (lambda: get_preset("decoder-tiny", dtype="float8"), "float8"),
        (lambda: get_preset("t5-tiny", remat_policy="some"), "remat_policy"),
        (lambda: get_preset("t5-tiny", attention_impl="flash"), "attention_impl"),
        (lambda: get_preset("t5-tiny", num_decoder_layers=0), "at least one"),
        (
            lambda: get_preset("t5-tiny", relative_attention_num_buckets=1),
            "relative_attention_num_buckets",
        ),
    ],
)
def test_config_validation(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_kv_heads_defaults_to_num_heads():
    assert get_preset("decoder-125m").kv_heads == 12
    assert get_preset("decoder-tiny").kv_heads == 4
