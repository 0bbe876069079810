"""The T5 encoder-decoder against the numpy reference, unpacked and packed."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from architecture_references import ATOL, RTOL, T5_ONE, logits_of, np_t5_forward, random_tokens
from random_params import random_params

from t5x_rationale.architectures import (
    EncoderDecoder,
    build_model,
    dummy_batch,
    get_preset,
    model_inputs,
)

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


# ============================================================================= packing


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
