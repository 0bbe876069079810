"""Hand-written numpy references of the T5 and decoder models, and the helpers that compare
the model code in t5x_rationale/architectures with them.

The references are deliberately slow and explicit (python loops over batch, head, query and
key; float64), and read the same parameters as the Flax modules.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from t5x_rationale.architectures import DecoderConfig, T5Config

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


def np_rope_inv_freq(d, theta, scaling=None):
    """HF's inverse frequencies, one python float at a time; `scaling` is
    ("llama3", factor, low_freq_factor, high_freq_factor, original_max_position_embeddings)."""
    out = []
    for i in range(d // 2):
        f = 1.0 / theta ** (2.0 * i / d)  # HF: 1 / theta^(arange(0, d, 2) / d)
        if scaling is not None:
            _, factor, low, high, original = scaling
            wavelength = 2 * math.pi / f
            if wavelength > original / low:  # long wavelengths: divided by the factor
                f = f / factor
            elif wavelength >= original / high:  # in between: blended
                t = (original / wavelength - low) / (high - low)
                f = (1 - t) * f / factor + t * f
        out.append(f)
    return out


def np_rope(x, positions, theta, scaling=None):
    """Rotate-half RoPE with an explicit loop over (batch, position, head, frequency)."""
    x = np.asarray(x, np.float64)
    b, length, heads, d = x.shape
    half = d // 2
    inv_freq = np_rope_inv_freq(d, theta, scaling)
    out = np.empty_like(x)
    for bi in range(b):
        for t in range(length):
            p = float(positions[bi, t])
            for h in range(heads):
                for i in range(half):
                    angle = p * inv_freq[i]
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


def np_mha(
    p, xq, xkv, allowed, *, bias=None, scale, q_pos=None, k_pos=None, theta=None, scaling=None
):
    """Multi-head attention; a projection's `bias` [heads, head_dim], when `p` has one, is
    added before RoPE."""
    q = np.einsum("bld,dhk->blhk", xq, p["query"]["kernel"])
    k = np.einsum("bld,dhk->blhk", xkv, p["key"]["kernel"])
    v = np.einsum("bld,dhk->blhk", xkv, p["value"]["kernel"])
    names = ("query", "key", "value")
    q, k, v = (x + p[n]["bias"] if "bias" in p[n] else x for x, n in zip((q, k, v), names))
    if theta is not None:
        q, k = np_rope(q, q_pos, theta, scaling), np_rope(k, k_pos, theta, scaling)
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
            scaling=c.rope_scaling,
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
