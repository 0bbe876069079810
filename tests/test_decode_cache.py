"""KV-cached decoding equals the teacher-forced full forward, position by position.

Convention (see decode_cache.py / MultiHeadAttention._update_cache): the first call with
decode=True while no cache exists creates it with the input's length (the maximum decode
length) and writes nothing; later calls write their tokens at the cache index and advance it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from random_params import random_params

from t5x_rationale.architectures import build_model, get_preset

RTOL = ATOL = 1e-5


def cache_index(cache):
    return int(cache["decoder"]["cache_index"])


def run_schedule(step, cache, tokens, full, schedule):
    """Feeds tokens in chunks of the given sizes; checks each chunk's logits against `full`."""
    start = 0
    for size in schedule:
        logits, mutated = step(cache, tokens[:, start : start + size])
        cache = mutated["cache"]
        assert logits.shape == (tokens.shape[0], size, full.shape[-1])
        np.testing.assert_allclose(
            np.asarray(logits),
            full[:, start : start + size],
            rtol=RTOL,
            atol=ATOL,
            err_msg=f"positions {start}..{start + size - 1}",
        )
        start += size
        assert cache_index(cache) == start
    assert start == tokens.shape[1]
    return cache


@pytest.mark.parametrize(
    "overrides",
    [
        dict(),  # 2 layers, 8 heads / 4 kv heads
        # Window < length (test_decoder checks that the window changes these logits).
        dict(num_kv_heads=2, sliding_window=3, scan_layers=True),
        # Qwen2's q/k/v biases (cached keys and values hold them) and Llama 3's RoPE scaling.
        dict(attention_bias=True, rope_theta=100.0, rope_scaling=("llama3", 8.0, 1.0, 4.0, 32)),
    ],
)
def test_decoder_only_cached_decoding_matches_full_forward(overrides):
    c = get_preset("decoder-tiny", **overrides)
    model = build_model(c)
    length = 9
    rng = np.random.default_rng(0)
    tokens = jnp.asarray(rng.integers(1, c.vocab_size, (2, length)), jnp.int32)
    params = random_params(model, decoder_input_tokens=tokens)

    @jax.jit
    def full_and_new_cache(p, toks):
        full = model.apply({"params": p}, toks)
        _, created = model.apply(
            {"params": p}, jnp.zeros_like(toks), decode=True, mutable=["cache"]
        )
        return full, created["cache"]

    full, cache = full_and_new_cache(params, tokens)
    full = np.asarray(full)
    # The cache has the layout model.init(..., decode=True) would give.
    init_shapes = jax.eval_shape(
        lambda: model.init(jax.random.PRNGKey(0), tokens, decode=True)["cache"]
    )
    assert jax.tree_util.tree_map(jnp.shape, cache) == jax.tree_util.tree_map(
        jnp.shape, init_shapes
    )
    assert cache_index(cache) == 0
    np.testing.assert_array_equal(np.asarray(cache["decoder"]["key_positions"]), np.arange(length))
    cached = [
        leaf
        for path, leaf in jax.tree_util.tree_leaves_with_path(cache)
        if "cached_key" in str(path)
    ]
    lead = (c.num_layers,) if c.scan_layers else ()
    # heads-major: [batch, kv_heads, length, head_dim]
    assert cached and all(k.shape == lead + (2, c.kv_heads, length, c.head_dim) for k in cached)

    step = jax.jit(
        lambda cache, toks: model.apply(
            {"params": params, "cache": cache}, toks, decode=True, mutable=["cache"]
        )
    )
    run_schedule(step, cache, tokens, full, [1] * length)  # one token at a time
    # prefill, a mid-sequence chunk, singles
    run_schedule(step, cache, tokens, full, [3, 3, 1, 1, 1])

    # Garbage in not-yet-written cache slots must not leak into a decode step.
    noisy = jax.tree_util.tree_map_with_path(
        lambda path, x: (
            jnp.asarray(1e3 * rng.standard_normal(x.shape), x.dtype)
            if "cached_" in jax.tree_util.keystr(path)
            else x
        ),
        cache,
    )
    run_schedule(step, noisy, tokens, full, [3, 3, 1, 1, 1])


def test_encoder_decoder_cached_decoding_matches_full_forward():
    c = get_preset("t5-tiny", num_encoder_layers=1, num_decoder_layers=1)
    model = build_model(c)
    rng = np.random.default_rng(1)
    enc = rng.integers(1, c.vocab_size, (2, 6)).astype(np.int32)
    enc[1, 4:] = 0  # encoder padding in one row
    enc = jnp.asarray(enc)
    length = 7
    dec = jnp.asarray(rng.integers(1, c.vocab_size, (2, length)), jnp.int32)
    params = random_params(model, encoder_input_tokens=enc, decoder_input_tokens=dec)

    @jax.jit
    def full_and_new_cache(p, e, d):
        full = model.apply({"params": p}, e, d)
        _, created = model.apply(
            {"params": p}, e, jnp.zeros_like(d), decode=True, mutable=["cache"]
        )
        return full, created["cache"]

    full, cache = full_and_new_cache(params, enc, dec)
    full = np.asarray(full)
    init_shapes = jax.eval_shape(
        lambda: model.init(jax.random.PRNGKey(0), enc, dec, decode=True)["cache"]
    )
    assert jax.tree_util.tree_map(jnp.shape, cache) == jax.tree_util.tree_map(
        jnp.shape, init_shapes
    )
    assert cache_index(cache) == 0

    # encode once, then decode steps through the `decode` method.
    encoded = jax.jit(lambda p, e: model.apply({"params": p}, e, method=model.encode))(params, enc)
    decode_step = jax.jit(
        lambda cache, toks: model.apply(
            {"params": params, "cache": cache},
            encoded,
            enc,
            toks,
            decode=True,
            mutable=["cache"],
            method=model.decode,
        )
    )
    run_schedule(decode_step, cache, dec, full, [3, 3, 1])
    run_schedule(decode_step, cache, dec, full, [1] * length)
