"""The decoder-only model against the numpy Llama reference: masks, prefix LM, packing, q/k/v
biases and Llama 3's RoPE scaling."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from architecture_references import ATOL, RTOL, logits_of, np_llama_forward, random_tokens
from random_params import random_params

from t5x_rationale.architectures import (
    DecoderOnly,
    build_model,
    dummy_batch,
    get_preset,
    model_inputs,
)

LLAMA3 = ("llama3", 8.0, 1.0, 4.0, 32)

# ================================================================ full forward vs numpy


@pytest.mark.parametrize(
    "overrides",
    [
        dict(num_layers=1),  # 8 heads / 4 kv heads
        # 8 / 2, tied output
        dict(num_layers=1, num_kv_heads=2, rope_theta=100.0, tie_embeddings=True),
        # Qwen2's q/k/v biases and Llama 3's RoPE scaling (the 4 frequencies of head_dim 8
        # at theta 100 have wavelengths 6.3, 20, 63, 199: with N / hi = 8 and N / lo = 32
        # they are kept, blended, divided, divided)
        dict(num_layers=1, rope_theta=100.0, rope_scaling=LLAMA3, attention_bias=True),
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


def _with_biases(params, c, fill):
    """`params` of a model without biases, plus q/k/v biases `fill(shape)`."""
    out = jax.tree.map(lambda x: x, params)  # new containers, same arrays
    for i in range(c.num_layers):
        attention = out["decoder"][f"layers_{i}"]["self_attention"]
        for name, heads in (("query", c.num_heads), ("key", c.kv_heads), ("value", c.kv_heads)):
            attention[name] = dict(attention[name], bias=fill((heads, c.head_dim)))
    return out


def test_q_k_v_biases_add_to_the_projections_before_rope():
    """Zero biases give exactly the logits without biases; random ones the numpy reference
    (which adds them to q, k and v before RoPE)."""
    plain = get_preset("decoder-tiny", rope_scaling=LLAMA3)
    biased = dataclasses.replace(plain, attention_bias=True)
    tokens = random_tokens(np.random.default_rng(6), (2, 7), plain.vocab_size)
    params = random_params(build_model(plain), decoder_input_tokens=tokens)
    zeros = _with_biases(params, plain, jnp.zeros)
    shapes = random_params(build_model(biased), decoder_input_tokens=tokens)
    assert jax.tree.map(jnp.shape, zeros) == jax.tree.map(jnp.shape, shapes)
    without = logits_of(build_model(plain), params, decoder_input_tokens=tokens)
    got = logits_of(build_model(biased), zeros, decoder_input_tokens=tokens)
    np.testing.assert_array_equal(got, without)
    rng = np.random.default_rng(7)
    random = _with_biases(params, plain, lambda shape: jnp.asarray(rng.normal(0, 1, shape)))
    got = logits_of(build_model(biased), random, decoder_input_tokens=tokens)
    want = np_llama_forward(random, biased, tokens)
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)
    assert np.abs(got - without).max() > 1e-2


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
