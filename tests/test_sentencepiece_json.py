"""The shipped SentencePiece model written as a Hugging Face tokenizer.json
(`interop.sentencepiece_json`): the `tokenizers` package encodes and decodes as sentencepiece,
on GSM8K and on edge cases, and as transformers' `AutoTokenizer` did on the same files
(tests/fixtures/sentencepiece_json_reference.json, made by
tests/fixtures/make_sentencepiece_json_reference.py)."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

import pytest
import sentencepiece as spm

from t5x_rationale.interop import sentencepiece_json
from t5x_rationale.interop.sentencepiece_json import write_hf_tokenizer

tokenizers = pytest.importorskip("tokenizers", reason="the `data` extra's tokenizers package")

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "tokenizers" / "rationale_sp.model"
REFERENCE = json.loads((ROOT / "tests/fixtures/sentencepiece_json_reference.json").read_text())
GSM8K_ROWS = 1000  # 2000 texts, questions and answers (11 of them ties)


@pytest.fixture(scope="module")
def sp():
    return spm.SentencePieceProcessor(model_file=str(MODEL))


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    out = tmp_path_factory.mktemp("hf_tokenizer")
    assert write_hf_tokenizer(MODEL, out) == list(sentencepiece_json.HF_TOKENIZER_FILES)
    return out


def load(directory: Path):
    tok = tokenizers.Tokenizer.from_file(str(directory / "tokenizer.json"))
    # transformers sets this from tokenizer_config.json's split_special_tokens
    tok.encode_special_tokens = True
    return tok


def encode(tok, text: str) -> list[int]:
    return tok.encode(text, add_special_tokens=False).ids


def equal_score_tie(sp, text: str, expected: list[int], got: list[int]) -> bool:
    """Both segmentations use the same pieces, in another order, for the same text.

    Their scores are then equal, and sentencepiece chooses between them by the float32
    rounding of the score of everything before (`#### 72` is `#`, `###` after most texts and
    `###`, `#` after some), which a tokenizer.json cannot reproduce.
    """
    return Counter(expected) == Counter(got) and sp.decode(got) == text.replace("\u2581", " ")


def gsm8k_texts() -> list[str]:
    path = ROOT.parent / "shared" / "data" / "gsm8k" / "train.jsonl"
    if not path.is_file():
        pytest.skip(f"GSM8K data not found at {path}")
    rows = [json.loads(line) for line in path.read_text().splitlines()[:GSM8K_ROWS]]
    return [text for row in rows for text in (row["question"], row["answer"])]


def test_gsm8k_encodes_and_decodes_as_sentencepiece(sp, export):
    tok, texts = load(export), gsm8k_texts()
    ties, different = [], []
    for text in texts:
        expected, got = sp.encode(text), encode(tok, text)
        assert tok.decode(expected) == sp.decode(expected) == text
        if got != expected:
            (ties if equal_score_tie(sp, text, expected, got) else different).append(text)
    assert not different, different[:3]
    # the whole train split: 74 of 14,946 texts, each one "####" split the other way
    assert len(ties) <= len(texts) // 100, ties


def test_edge_cases_encode_and_decode_as_sentencepiece(sp, export):
    tok = load(export)
    for case in REFERENCE["cases"]:
        text, expected = case["text"], sp.encode(case["text"])
        got = encode(tok, text)
        assert got == expected, (text, tok.encode(text, add_special_tokens=False).tokens)
        assert tok.decode(expected) == sp.decode(expected), text


def test_encodes_and_decodes_as_transformers_did(export):
    """The ids and texts of AutoTokenizer on the same files, from the fixture."""
    assert REFERENCE["model_sha256"] == hashlib.sha256(MODEL.read_bytes()).hexdigest()
    tok = load(export)
    for case in REFERENCE["cases"]:
        assert encode(tok, case["text"]) == case["ids"], case["text"]
        assert tok.encode(case["text"]).ids == case["ids_with_special_tokens"]
        assert tok.decode(case["ids"]) == case["decoded"]
    for case in REFERENCE["decode_skipping_special"]:
        assert tok.decode(case["ids"], skip_special_tokens=True) == case["text"]


def test_add_eos_appends_the_eos_as_transformers_did(tmp_path):
    write_hf_tokenizer(MODEL, tmp_path, add_eos=True, model_max_length=512)
    tok = load(tmp_path)
    for case in REFERENCE["add_eos"]:
        assert tok.encode(case["text"]).ids == case["ids"]
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert config["add_eos_token"] is True and config["model_max_length"] == 512


def test_special_tokens(sp, export):
    tok = load(export)
    ids = {"bos": None, "eos": 1, "pad": 0, "unk": 2}
    assert REFERENCE["special_ids"] == ids
    assert REFERENCE["tokenizer_class"] in ("PreTrainedTokenizerFast", "TokenizersBackend")
    added = {
        t["id"]: (t["content"], t["special"]) for t in json.loads(tok.to_str())["added_tokens"]
    }
    assert added == {0: ("<pad>", True), 1: ("</s>", True), 2: ("<unk>", True)}
    for index, piece in enumerate(["<thought>", "</thought>", "-->", "---", "###"], start=3):
        assert tok.token_to_id(piece) == index == sp.piece_to_id(piece)
        assert encode(tok, f"a{piece}b") == sp.encode(f"a{piece}b")
    assert tok.get_vocab_size() == sp.get_piece_size() == 2048
    config = json.loads((export / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert (config["bos_token"], config["eos_token"], config["pad_token"]) == (
        None,
        "</s>",
        "<pad>",
    )
    assert config["unk_token"] == "<unk>" and config["add_bos_token"] is False
    assert config["split_special_tokens"] is True
    special_map = json.loads((export / "special_tokens_map.json").read_text())
    assert special_map == {"eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"}


def test_a_model_with_a_charsmap_and_extra_whitespace_removal(tmp_path):
    """Another normalizer: nmt_nfkc's precompiled charsmap, extra whitespace removed."""
    texts = gsm8k_texts()
    model = tmp_path / "nfkc.model"
    with open(model, "wb") as f:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(texts[:1000]),
            model_writer=f,
            vocab_size=500,
            normalization_rule_name="nmt_nfkc",
            user_defined_symbols=["<thought>", "-->"],
            byte_fallback=True,
            num_threads=1,
            minloglevel=2,
        )
    sp = spm.SentencePieceProcessor(model_file=str(model))
    assert sp.normalize("  Ａ  b ") == "\u2581A\u2581b"
    write_hf_tokenizer(model, tmp_path / "hf")
    tok = load(tmp_path / "hf")
    edge = [case["text"] for case in REFERENCE["cases"]] + ["ＡＢＣ ｆｕｌｌ ① ﬁ", "x\u3000y"]
    for text in texts[1000:1400] + edge:
        expected, got = sp.encode(text), encode(tok, text)
        assert got == expected or equal_score_tie(sp, sp.decode(expected), expected, got), text
        assert tok.decode(expected) == sp.decode(expected), text


def test_refuses_what_it_cannot_write(tmp_path):
    proto = sentencepiece_json.read_model_proto(MODEL)
    proto.trainer_spec.model_type = 2  # BPE
    with pytest.raises(ValueError, match="unigram"):
        sentencepiece_json.tokenizer_json(proto)
    with pytest.raises(FileNotFoundError, match="missing.model"):
        write_hf_tokenizer(tmp_path / "missing.model", tmp_path / "out")
