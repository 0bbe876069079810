"""The vocabulary of a run: the shipped SentencePiece model, a user model by path, or the
tokenizer of a Hugging Face directory (`hf_vocab.vocabulary_from_hf_dir`).

The shipped model, `tokenizers/rationale_sp.model` (see `tokenizers/README.md`), is trained on
the synthetic rationale corpus by `tokenizers/train_tokenizer.py`. Every model used with the
tasks must keep T5's id layout: pad 0, eos 1, unk 2. The Quiet-STaR methods also need the
thought pieces "<thought>" and "</thought>" as single ids (`thought_token_ids`); on a Hugging
Face vocabulary, `hf_vocab.quiet_star_thought_ids` gives them.
"""

from __future__ import annotations

import functools
import os
from typing import Optional

import seqio

from t5x_rationale.data.hf_vocab import vocabulary_from_hf_dir

DEFAULT_SPM_PATH = os.path.abspath(
    os.path.join(os.path.dirname(__file__), "..", "..", "tokenizers", "rationale_sp.model")
)
THOUGHT_START = "<thought>"
THOUGHT_END = "</thought>"
COT_SEPARATOR = "-->"
SPECIAL_PIECES = (THOUGHT_START, THOUGHT_END, COT_SEPARATOR, "---", "###")
REQUIRED_IDS = {"pad": 0, "eos": 1, "unk": 2}


def _exists(path: str) -> bool:
    """Whether the model file exists (local paths, or any filesystem TensorFlow can read)."""
    if "://" in path:
        import tensorflow as tf  # only remote paths (gs://...) need TensorFlow's filesystems

        return tf.io.gfile.exists(path)
    return os.path.isfile(path)


def get_vocabulary(path: Optional[str] = None, extra_ids: int = 0) -> seqio.Vocabulary:
    """The seqio vocabulary of a SentencePiece model (default: the shipped one), or of a
    local Hugging Face directory (`vocabulary_from_hf_dir`; `train.vocabulary_path = HF_DIR`).

    Raises:
      FileNotFoundError: the model file does not exist.
      ValueError: the model's pad / eos / unk ids are not 0 / 1 / 2 (SentencePiece files), or
        the HF directory's special ids are missing or inconsistent.
    """
    path = os.fspath(path) if path is not None else DEFAULT_SPM_PATH
    if os.path.isdir(path):
        return _load_hf_dir(os.path.abspath(path), extra_ids)
    if not _exists(path):
        hint = (
            " (the shipped model; rebuild it with `python tokenizers/train_tokenizer.py`)"
            if os.path.abspath(path) == DEFAULT_SPM_PATH
            else ""
        )
        raise FileNotFoundError(
            f"SentencePiece model file {path} does not exist: expected a "
            f".model file written by the SentencePiece trainer{hint}"
        )
    return _load_checked(path, extra_ids)


@functools.lru_cache(maxsize=None)
def _load_hf_dir(directory: str, extra_ids: int) -> seqio.Vocabulary:
    """Loads a HF directory's vocabulary once per (directory, extra_ids)."""
    return vocabulary_from_hf_dir(directory, extra_ids=extra_ids)


@functools.lru_cache(maxsize=None)
def _load_checked(path: str, extra_ids: int) -> seqio.SentencePieceVocabulary:
    """Loads the vocabulary once per (path, extra_ids) and checks its special ids."""
    vocabulary = seqio.SentencePieceVocabulary(path, extra_ids=extra_ids)
    try:
        model = vocabulary.tokenizer
    except Exception as e:  # SentencePiece's parse error does not name the file
        raise ValueError(
            f"{path} is not a SentencePiece model ({type(e).__name__}: {e}); expected a .model "
            "file written by the SentencePiece trainer"
        ) from e
    found = {"pad": model.pad_id(), "eos": model.eos_id(), "unk": model.unk_id()}
    if found != REQUIRED_IDS:
        raise ValueError(
            f"SentencePiece model {path} has ids {found}; the tasks need {REQUIRED_IDS} "
            f"(train it with pad_id=0, eos_id=1, unk_id=2)"
        )
    return vocabulary


def piece_id(vocabulary, piece: str) -> int:
    """The id of a piece that must be a single token of the vocabulary (ValueError if it is not)."""
    model = getattr(
        vocabulary, "tokenizer", vocabulary
    )  # a seqio vocabulary or a SentencePieceProcessor
    index = model.piece_to_id(piece)
    if model.id_to_piece(index) != piece:  # unknown pieces map to unk
        raise ValueError(
            f"the vocabulary has no piece {piece!r}; use a SentencePiece model trained with it "
            f"as a user-defined symbol, such as the shipped one ({DEFAULT_SPM_PATH})"
        )
    return index


def thought_token_ids(vocabulary) -> tuple[int, int]:
    """The ids of "<thought>" and "</thought>" (Quiet-STaR thought start and end)."""
    return piece_id(vocabulary, THOUGHT_START), piece_id(vocabulary, THOUGHT_END)


def text_before_eos(vocabulary: seqio.Vocabulary, tokens) -> str:
    """The text of a right-padded token row up to its first EOS (padding follows the EOS, or
    the row is full): a token at id 0 before it is text (byte-level BPE: "!"), not padding."""
    ids = [int(t) for t in tokens]
    if vocabulary.eos_id in ids:
        ids = ids[: ids.index(vocabulary.eos_id)]
    return vocabulary.decode(ids)
