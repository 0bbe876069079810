"""What a run checks about an imported tokenizer: decoding stops at its eos, and a text
token at id 0 is said out loud where it is still taken for padding (an encoder's unpacked
inputs)."""

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


def test_a_text_token_at_id_zero_is_said_once_for_an_encoder_decoder(capsys, monkeypatch):
    monkeypatch.setattr(run_inputs, "_WARNED", set())
    model = get_preset("t5-tiny", vocab_size=2048)
    run_inputs.load_vocabulary(None, model)  # the shipped model: id 0 is <pad>
    assert capsys.readouterr().err == ""
    run_inputs.load_vocabulary(BPE, model)
    err = capsys.readouterr().err
    assert "id 0 of" in err and "'!'" in err and "unpacked encoder inputs" in err
    run_inputs.load_vocabulary(BPE, model)
    assert capsys.readouterr().err == ""
    run_inputs.load_vocabulary(BPE, get_preset("decoder-tiny", vocab_size=2048))
    assert capsys.readouterr().err == ""  # a decoder-only model tells id 0 from padding


def test_thought_tables_show_tokens_of_either_tokenizer():
    from t5x_rationale.inspect_thoughts import piece_text

    shipped = get_vocabulary()
    ids = shipped.encode("What is 12?")
    assert "".join(piece_text(shipped, i) for i in ids).strip() == "What is 12?"
    bpe = vocabulary_from_hf_dir(BPE)
    ids = bpe.encode("What is 12?")
    assert len(ids) > 1 and "".join(piece_text(bpe, i) for i in ids) == "What is 12?"
    assert piece_text(bpe, bpe.vocab_size) == ""  # an appended thought id


def test_quiet_star_takes_its_thought_ids_from_the_vocabulary():
    from t5x_rationale.gin_configurables import quiet_star_config

    bpe = vocabulary_from_hf_dir(BPE)
    decoder = get_preset("decoder-tiny", vocab_size=bpe.vocab_size)
    config = quiet_star_config(decoder, vocabulary_path=BPE)
    assert config.thought_token_ids == (bpe.vocab_size, bpe.vocab_size + 1)  # appended
    assert config.thought_init_ids == tuple(bpe.encode("---"))
    shipped = quiet_star_config(get_preset("decoder-tiny", vocab_size=2048), vocabulary_path=None)
    assert (shipped.thought_token_ids, shipped.thought_init_ids) == ((3, 4), (6,))
    from_file = quiet_star_config(
        get_preset("decoder-tiny", vocab_size=2048),
        vocabulary_path=os.path.join(
            os.path.dirname(BPE), "..", "..", "..", "tokenizers", "rationale_sp.model"
        ),
    )
    assert (from_file.thought_token_ids, from_file.thought_init_ids) == ((3, 4), (6,))
    with pytest.raises(ValueError, match="vocabulary_path or the thought ids, not both"):
        quiet_star_config(decoder, thought_token_ids=(3, 4), vocabulary_path=BPE)


def test_text_before_eos_keeps_id_zero_and_stops_at_eos():
    from t5x_rationale.data.vocab import text_before_eos

    bpe = vocabulary_from_hf_dir(BPE)
    ids = list(bpe.encode("Hi")) + [0]
    assert text_before_eos(bpe, ids + [bpe.eos_id, 0, 0]) == "Hi!"
    assert text_before_eos(bpe, ids) == "Hi!"  # a full row without EOS
    shipped = get_vocabulary()
    assert text_before_eos(shipped, list(shipped.encode("7")) + [1, 0, 0]) == "7"
