"""Decoding prompts that hold and end with id 0 as a text token (byte-level BPE: "!"), with
their lengths given, against the slow full-forward references of `test_decoding.py`."""

import numpy as np
import pytest
from test_decoding import LONG_PROMPT_LENGTHS, T, case, teacher_forced_scores, uncached_greedy

from t5x_rationale.inference.decoding import DecodeConfig, decode


@pytest.mark.parametrize("method", ["greedy", "beam"])
def test_prompts_ending_with_id_zero_as_text_decode_with_their_lengths(method):
    """Where id 0 is a text token (byte-level BPE: "!"), prompts may hold and end with it:
    `decoder_prompt_lengths` says where each ends, and decoding continues after all of it."""
    model, params, batch = case("decoder", LONG_PROMPT_LENGTHS)
    prompt = batch["decoder_prompt_tokens"].copy()
    lengths = np.asarray(LONG_PROMPT_LENGTHS, np.int32)
    prompt[0, 2] = 0  # the last token of the shortest prompt (sets the prefill)
    prompt[1, [1, 5]] = 0  # inside and last
    prompt[2, 0] = 0  # first
    zero_batch = {"decoder_prompt_tokens": prompt, "decoder_prompt_lengths": lengths}
    config = DecodeConfig(T, method=method, num_beams=1, length_penalty=0.0)
    result = decode(model, params, zero_batch, config)
    want_tokens, want_lengths = uncached_greedy(model, params, zero_batch, T)
    np.testing.assert_array_equal(np.asarray(result.tokens), want_tokens)
    np.testing.assert_array_equal(np.asarray(result.lengths), want_lengths)
    np.testing.assert_allclose(
        np.asarray(result.scores),
        teacher_forced_scores(model, params, zero_batch, want_tokens, want_lengths, T),
        rtol=1e-4,
    )
    # Inferred lengths would end rows 0 and 1 before their final 0: other continuations.
    inferred = decode(model, params, {"decoder_prompt_tokens": prompt}, config)
    assert (np.asarray(inferred.tokens)[:2] != want_tokens[:2]).any(axis=1).all()
    with pytest.raises(ValueError, match="decoder_prompt_lengths"):
        decode(model, params, {**zero_batch, "decoder_prompt_lengths": lengths + 1}, config)
