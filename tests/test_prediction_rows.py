"""The prediction engine's model rows and output text where id 0 is a text token
(byte-level BPE: "!"): prompts carry explicit lengths and outputs keep every token before EOS."""

import os

import numpy as np

from t5x_rationale.data.hf_vocab import vocabulary_from_hf_dir
from t5x_rationale.inference.decoding import DecodeConfig
from t5x_rationale.inference.prediction import Predictor

BPE = os.path.join(os.path.dirname(__file__), "fixtures", "hf_tokenizers", "bpe")


def _predictor(encoder_decoder: bool, input_length: int = 6, eos_id: int = 301) -> Predictor:
    """A Predictor's row building and detokenizing, without a checkpoint to restore."""
    predictor = Predictor.__new__(Predictor)
    predictor.encoder_decoder, predictor.input_length = encoder_decoder, input_length
    predictor.vocabulary = vocabulary_from_hf_dir(BPE)
    predictor.decode_config = DecodeConfig(4, eos_id=eos_id)
    return predictor


def _reference_rows(prompts, width):
    """Plain-Python reference: right-padded rows and their true lengths."""
    tokens = np.zeros((len(prompts), width), np.int32)
    for i, p in enumerate(prompts):
        tokens[i, : len(p)] = p
    return tokens, np.array([max(len(p), 1) for p in prompts], np.int32)


def test_decoder_prompts_carry_their_lengths_even_when_they_end_with_id_zero():
    predictor = _predictor(encoder_decoder=False)
    examples = [{"inputs": [5, 0]}, {"inputs": [0, 7, 8, 9, 10, 11]}, {"inputs": []}]
    rows, truncated = predictor._rows(examples, None)
    want = [[0, 5, 0], [0, 0, 7, 8, 9, 10], [0]]  # [0] + inputs, cut at 6
    tokens, lengths = _reference_rows(want, 6)
    np.testing.assert_array_equal(rows["decoder_prompt_tokens"], tokens)
    np.testing.assert_array_equal(rows["decoder_prompt_lengths"], lengths)
    assert truncated == 1

    forced, _ = predictor._rows(examples, [[0], [4], [0, 0]])
    want = [[0, 5, 0, 0], [0, 0, 7, 8, 9, 10, 4], [0, 0, 0]]
    tokens, lengths = _reference_rows(want, 7)
    np.testing.assert_array_equal(forced["decoder_prompt_tokens"], tokens)
    np.testing.assert_array_equal(forced["decoder_prompt_lengths"], lengths)


def test_encoder_decoder_forced_prefixes_carry_their_lengths():
    predictor = _predictor(encoder_decoder=True)
    rows, _ = predictor._rows([{"inputs": [5, 6]}, {"inputs": [7]}], [[3, 0], []])
    tokens, lengths = _reference_rows([[0, 3, 0], [0]], 3)
    np.testing.assert_array_equal(rows["decoder_prompt_tokens"], tokens)
    np.testing.assert_array_equal(rows["decoder_prompt_lengths"], lengths)
    assert "decoder_prompt_lengths" not in predictor._rows([{"inputs": [5]}], None)[0]


def test_output_text_keeps_id_zero_tokens_before_eos():
    predictor = _predictor(encoder_decoder=False)
    bang = predictor.vocabulary.encode("!")
    assert list(bang) == [0]
    ids = list(predictor.vocabulary.encode("Hi")) + [0, 0]
    row = np.array(ids + [301, 0, 0], np.int32)
    assert predictor.detokenize(row) == "Hi!!"
    assert predictor.detokenize(np.array(ids, np.int32), forced=[0]) == "!Hi!!"
