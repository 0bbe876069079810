"""Our KV-cached greedy decoding of the imported Hugging Face fixtures gives exactly the tokens
transformers' `generate()` gave (issue 21; tests/fixtures/hf/README.md, `reference.npz`).

transformers decodes the decoders' prompts left-padded, each row's positions counted over its
real tokens and its pad keys masked: every row is decoded as if alone. `decode` takes
right-padded prompts of different lengths and decodes each row as if alone too (one cache
column per position, shared by all rows; tests/test_decoding.py checks it against a
row-by-row full forward), so the left pads are moved to the right. T5's encoder input is
right-padded with 0 in both, and our decoder starts from token 0 as transformers' does.
"""

import numpy as np
import pytest
from test_hf_fixtures import IMPORTED, _imported

from t5x_rationale.inference.decoding import DecodeConfig, decode


def right_padded(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Each row's real tokens (mask 1) moved to the front, pads (0) after them."""
    out = np.zeros(ids.shape, np.int32)
    for row, (tokens, keep) in enumerate(zip(ids, mask.astype(bool))):
        real = tokens[keep]
        out[row, : len(real)] = real
    return out


def test_right_padded_moves_left_pads_after_the_real_tokens():
    ids = np.array([[5, 6, 7], [0, 0, 9]])
    mask = np.array([[1, 1, 1], [0, 0, 1]])
    np.testing.assert_array_equal(right_padded(ids, mask), [[5, 6, 7], [9, 0, 0]])


def _inputs_and_expected(ref):
    """(our batch, transformers' new tokens [B, max_new_tokens]) of a fixture."""
    ids, mask = ref["generate_input_ids"], ref["generate_attention_mask"]
    output = ref["generate_output"]
    if "decoder_start_token_id" in ref.files:  # T5: output = decoder start + new tokens
        assert (output[:, 0] == ref["decoder_start_token_id"]).all()
        assert int(ref["decoder_start_token_id"]) == 0  # our decoder starts from 0
        return {"encoder_input_tokens": right_padded(ids, mask)}, output[:, 1:]
    np.testing.assert_array_equal(output[:, : ids.shape[1]], ids)  # output = prompt + new
    return {"decoder_prompt_tokens": right_padded(ids, mask)}, output[:, ids.shape[1] :]


@pytest.mark.parametrize("name", IMPORTED)
def test_greedy_decoding_equals_transformers_generate(name):
    model, params, ref = _imported(name)
    assert int(ref["pad_token_id"]) == 0  # transformers fills a finished row with pad 0, as we do
    batch, want = _inputs_and_expected(ref)
    eos = int(ref["eos_token_id"])
    config = DecodeConfig(int(ref["max_new_tokens"]), eos_id=eos)
    result = decode(model, params, batch, config)
    np.testing.assert_array_equal(np.asarray(result.tokens), want)
    finished = [np.flatnonzero(row == eos) for row in want]
    lengths = [hit[0] + 1 if hit.size else want.shape[1] for hit in finished]
    np.testing.assert_array_equal(np.asarray(result.lengths), lengths)
