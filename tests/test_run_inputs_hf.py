"""What a run checks about an imported tokenizer: decoding stops at its eos, and a text
token at id 0 (the pipeline's padding) is said out loud."""

import os

import pytest

from t5x_rationale.architectures import get_preset
from t5x_rationale.data import run_inputs
from t5x_rationale.data.hf_vocab import vocabulary_from_hf_dir
from t5x_rationale.data.vocab import get_vocabulary

BPE = os.path.join(os.path.dirname(__file__), "fixtures", "hf_tokenizers", "bpe")


def test_decoding_must_stop_at_the_tokenizers_eos():
    vocabulary = vocabulary_from_hf_dir(BPE)
    with pytest.raises(
        ValueError, match="DecodeConfig.eos_id = 1, .* set DecodeConfig.eos_id = 301"
    ):
        run_inputs.check_decode_eos(1, vocabulary)
    run_inputs.check_decode_eos(301, vocabulary)
    run_inputs.check_decode_eos(None, vocabulary)  # never stops early: allowed
    run_inputs.check_decode_eos(1, get_vocabulary())


def test_a_text_token_at_id_zero_is_said_once(capsys, monkeypatch):
    monkeypatch.setattr(run_inputs, "_WARNED", set())
    model = get_preset("decoder-tiny", vocab_size=2048)
    run_inputs.load_vocabulary(None, model)  # the shipped model: id 0 is <pad>
    assert capsys.readouterr().err == ""
    run_inputs.load_vocabulary(BPE, model)
    err = capsys.readouterr().err
    assert "id 0 of" in err and "'!'" in err and "get no loss" in err
    run_inputs.load_vocabulary(BPE, model)
    assert capsys.readouterr().err == ""
