"""The shipped SentencePiece model and `t5x_rationale.data.vocab`."""

from __future__ import annotations

import io
import os
import subprocess
import sys

import numpy as np
import pytest
import sentencepiece as spm

from t5x_rationale.data import synthetic, vocab

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO_ROOT, "tokenizers", "train_tokenizer.py")
SHIPPED_VOCAB = os.path.join(REPO_ROOT, "tokenizers", "rationale_sp.vocab")
WHITESPACE_MARK = "\u2581"  # SentencePiece's own space symbol reads back as a space


@pytest.fixture(scope="module")
def processor() -> spm.SentencePieceProcessor:
    return spm.SentencePieceProcessor(model_file=vocab.DEFAULT_SPM_PATH)


def tiny_model(tmp_path, name: str, **options) -> str:
    """Trains a small SentencePiece model (no special pieces) and returns its path."""
    sentences = [row["input"] for row in synthetic.generate_split("train", num_examples=200)]
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences),
        model_writer=model,
        vocab_size=200,
        num_threads=1,
        minloglevel=2,
        **options,
    )
    path = os.path.join(tmp_path, name)
    with open(path, "wb") as f:
        f.write(model.getvalue())
    return path


def test_default_path_is_the_shipped_model():
    assert vocab.DEFAULT_SPM_PATH == os.path.join(REPO_ROOT, "tokenizers", "rationale_sp.model")
    assert os.path.isfile(vocab.DEFAULT_SPM_PATH)


def test_special_ids(processor):
    assert (processor.pad_id(), processor.eos_id(), processor.unk_id(), processor.bos_id()) == (
        0,
        1,
        2,
        -1,
    )
    assert [processor.id_to_piece(i) for i in range(3)] == ["<pad>", "</s>", "<unk>"]
    seqio_vocab = vocab.get_vocabulary()
    assert (seqio_vocab.pad_id, seqio_vocab.eos_id, seqio_vocab.unk_id) == (0, 1, 2)
    assert seqio_vocab.vocab_size == processor.get_piece_size() == 2048


def test_special_pieces_are_single_ids(processor):
    sys.path.insert(0, os.path.dirname(SCRIPT))
    try:
        import train_tokenizer
    finally:
        sys.path.remove(os.path.dirname(SCRIPT))
    assert train_tokenizer.SPECIAL_PIECES == vocab.SPECIAL_PIECES
    for expected_id, piece in enumerate(vocab.SPECIAL_PIECES, start=3):
        assert processor.piece_to_id(piece) == expected_id
        assert expected_id in processor.encode(f"before {piece} after")
        assert processor.encode(f"x{piece}y", out_type=str).count(piece) == 1
    assert vocab.thought_token_ids(vocab.get_vocabulary()) == (3, 4)
    assert vocab.thought_token_ids(processor) == (3, 4)


def test_digits_are_single_pieces(processor):
    pieces = processor.encode("The answer is 20480.", out_type=str)
    assert [p for p in pieces if any(c.isdigit() for c in p)] == ["2", "0", "4", "8", "0"]


def test_corpus_text_round_trips_with_no_unk(processor):
    rows = synthetic.generate_split("validation", num_examples=50)
    texts = [synthetic.plain_text(r) for r in rows] + [
        t for r in rows for t in r["rationales"] + r["negatives"]
    ]
    total_pieces = total_chars = 0
    for text in texts:
        ids = processor.encode(text)
        assert processor.unk_id() not in ids
        assert processor.decode(ids) == text
        total_pieces, total_chars = total_pieces + len(ids), total_chars + len(text)
    assert (
        total_pieces < 0.5 * total_chars
    )  # mostly whole words (each digit and its space are pieces)
    for word in ("answer", "dollars", "friend", "savings", "cookies"):
        assert len(processor.encode(f"The {word}")) == 2, word
    seqio_vocab = vocab.get_vocabulary()
    assert seqio_vocab.decode(seqio_vocab.encode(texts[0])) == texts[0]


def test_any_unicode_round_trips_through_byte_fallback(processor):
    samples = [
        "naïve café, 東京 ☕ 🚀",
        "tab\tnew\nline",
        "  two  spaces ",
        "\x00\x7f",
        "Ünïcödé –— “quotes”",
    ]
    rng = np.random.default_rng(0)
    for _ in range(200):
        codes = rng.integers(1, 0x110000, size=16)
        samples.append(
            "".join(chr(c) for c in codes if not 0xD800 <= c < 0xE000 and chr(c) != WHITESPACE_MARK)
        )
    for text in samples:
        ids = processor.encode(text)
        assert processor.unk_id() not in ids, text
        assert processor.decode(ids) == text


def test_missing_model_names_the_path(tmp_path):
    missing = os.path.join(tmp_path, "nowhere", "model.model")
    with pytest.raises(FileNotFoundError, match="nowhere/model.model") as error:
        vocab.get_vocabulary(missing)
    assert "SentencePiece" in str(error.value)


def test_a_file_that_is_not_a_model_is_named(tmp_path):
    path = tmp_path / "vocab.txt"
    path.write_text("a\nb\n")
    with pytest.raises(ValueError, match=f"{path} is not a SentencePiece model"):
        vocab.get_vocabulary(str(path))


def test_user_model_with_t5_ids_loads_but_has_no_thought_pieces(tmp_path):
    path = tiny_model(tmp_path, "user.model", pad_id=0, eos_id=1, unk_id=2, bos_id=-1)
    user_vocab = vocab.get_vocabulary(path, extra_ids=3)
    assert (user_vocab.pad_id, user_vocab.eos_id, user_vocab.unk_id) == (0, 1, 2)
    assert user_vocab.vocab_size == 203
    with pytest.raises(ValueError, match="<thought>"):
        vocab.thought_token_ids(user_vocab)


def test_user_model_with_other_ids_is_rejected(tmp_path):
    path = tiny_model(tmp_path, "default_ids.model")  # SentencePiece defaults: unk 0, bos 1, eos 2
    with pytest.raises(ValueError, match="pad_id=0, eos_id=1, unk_id=2"):
        vocab.get_vocabulary(path)


def test_training_script_reproduces_the_shipped_model(tmp_path):
    subprocess.run(
        [sys.executable, SCRIPT, "--out_dir", str(tmp_path)], check=True, capture_output=True
    )
    with (
        open(tmp_path / "rationale_sp.model", "rb") as new,
        open(vocab.DEFAULT_SPM_PATH, "rb") as shipped,
    ):
        assert new.read() == shipped.read()
    with (
        open(tmp_path / "rationale_sp.vocab", encoding="utf-8") as new,
        open(SHIPPED_VOCAB, encoding="utf-8") as old,
    ):
        assert new.read() == old.read()
