"""A Hugging Face model directory's tokenizer as a seqio `Vocabulary`.

`vocabulary_from_hf_dir(directory)` picks the tokenizer file:
- `tokenizer.model` (or T5's `spiece.model`), SentencePiece: a `seqio.SentencePieceVocabulary`
  as the project loads its own model, its eos / bos / unk checked against the HF files;
- else `tokenizer.json` (byte-level BPE as Llama 3 and Qwen2 ship it, or any other model the
  `tokenizers` package reads): an `HFTokenizerVocabulary`.
Special ids come from the HF files (`hf_special_ids.read_special_ids`).

`HFTokenizerVocabulary` encodes as `AutoTokenizer(text, add_special_tokens=False)` does (no
BOS: seqio adds EOS through `Feature(add_eos=True)`; a text that spells a special token gets
its id, as in transformers) and decodes with the special tokens skipped. In tf.data it runs
the same Python tokenizer through `tf.numpy_function`, so it holds the GIL while it works.

The seqio pipeline (`converters.py`) pads with id 0 and takes id 0 for padding; in Llama 3's
and Qwen2's vocabularies id 0 is "!", whose loss weight the converters would zero.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from typing import Optional, Sequence

import numpy as np
import seqio
import tensorflow as tf

from t5x_rationale.data.hf_special_ids import SpecialIds, read_special_ids

SENTENCEPIECE_FILES = ("tokenizer.model", "spiece.model")
TOKENIZER_JSON = "tokenizer.json"
# Quiet-STaR's added tokens (the paper's), and the project's own pieces in its SentencePiece.
THOUGHT_TOKENS = (("<|startthought|>", "<|endthought|>"), ("<thought>", "</thought>"))
THOUGHT_INIT_TEXT = "---"


class HFTokenizerVocabulary(seqio.Vocabulary):
    """A `tokenizer.json` read by the `tokenizers` package, with the directory's special ids.

    Ids at or above the tokenizer's size (extra ids, Quiet-STaR's appended thought ids) decode
    to nothing. `pad_id` is the HF pad, else the eos (the converters still pad with 0).
    """

    def __init__(self, tokenizer_file: str, special_ids: SpecialIds, extra_ids: int = 0):
        super().__init__(extra_ids=extra_ids)
        self._file = os.fspath(tokenizer_file)
        self._special = special_ids
        self._tokenizer = None

    @property
    def tokenizer(self):
        """The `tokenizers.Tokenizer`, loaded on first use (the vocabulary pickles without it)."""
        if self._tokenizer is None:
            import tokenizers  # the HF package, not the repository's tokenizers/ folder

            self._tokenizer = tokenizers.Tokenizer.from_file(self._file)
        return self._tokenizer

    @property
    def tokenizer_file(self) -> str:
        return self._file

    @property
    def special_ids(self) -> SpecialIds:
        return self._special

    @property
    def bos_id(self) -> Optional[int]:
        return self._special.bos

    @property
    def eos_id(self) -> int:
        return self._special.eos

    @property
    def pad_id(self) -> int:
        return self._special.pad if self._special.pad is not None else self._special.eos

    @property
    def unk_id(self) -> Optional[int]:
        return self._special.unk

    @property
    def _base_vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    def token_to_id(self, token: str) -> Optional[int]:
        """The id of a token string (a piece, byte-level spelled), None if there is none."""
        return self.tokenizer.token_to_id(token)

    def _encode(self, s: str) -> Sequence[int]:
        return self.tokenizer.encode(s, add_special_tokens=False).ids

    def _decode(self, ids) -> str:
        size = self._base_vocab_size
        return self.tokenizer.decode(
            [int(i) for i in ids if 0 <= i < size], skip_special_tokens=True
        )

    def _encode_numpy(self, texts: np.ndarray):
        """Flat ids and per-text lengths of an array of UTF-8 strings (any shape, row-major)."""
        texts = [t.decode("utf-8") for t in np.asarray(texts, dtype=object).reshape(-1)]
        encoded = self.tokenizer.encode_batch(texts, add_special_tokens=False)
        lengths = np.array([len(e.ids) for e in encoded], np.int64)
        flat = np.array([i for e in encoded for i in e.ids], np.int32)
        return flat, lengths

    def _encode_tf(self, s: tf.Tensor) -> tf.Tensor:
        """A scalar string to int32 ids [n]; a vector of strings to a RaggedTensor [b, None]."""
        s = tf.convert_to_tensor(s, tf.string)
        flat, lengths = tf.numpy_function(
            self._encode_numpy, [s], (tf.int32, tf.int64), stateful=False
        )
        flat.set_shape([None])
        if s.shape.rank == 0:
            return flat
        if s.shape.rank != 1:
            raise ValueError(f"encode_tf takes a scalar or a vector of strings, got {s.shape}")
        lengths.set_shape(s.shape)
        return tf.RaggedTensor.from_row_lengths(flat, lengths)

    def _decode_numpy(self, ids: np.ndarray) -> np.ndarray:
        rows = ids.reshape(int(np.prod(ids.shape[:-1])), ids.shape[-1])
        texts = [self._decode(row.tolist()).encode("utf-8") for row in rows]
        return np.array(texts, dtype=object).reshape(ids.shape[:-1])

    def _decode_tf(self, ids: tf.Tensor) -> tf.Tensor:
        """int ids [..., n] (dense; a RaggedTensor is padded with pad_id) to strings [...]."""
        if isinstance(ids, tf.RaggedTensor):
            ids = ids.to_tensor(default_value=self.pad_id)
        ids = tf.convert_to_tensor(ids)
        text = tf.numpy_function(self._decode_numpy, [ids], tf.string, stateful=False)
        text.set_shape(ids.shape[:-1])
        return text

    def __getstate__(self):
        return {**self.__dict__, "_tokenizer": None}

    def __eq__(self, other) -> bool:
        if not isinstance(other, HFTokenizerVocabulary):
            return False
        return (self._digest(), self._special, self.extra_ids) == (
            other._digest(),
            other._special,
            other.extra_ids,
        )

    def __hash__(self) -> int:
        return hash((self._digest(), self._special, self.extra_ids))

    def _digest(self) -> str:
        with open(self._file, "rb") as f:
            return hashlib.md5(f.read()).hexdigest()

    def __str__(self) -> str:
        return (
            f"HFTokenizerVocabulary(file={self._file}, extra_ids={self.extra_ids}, "
            f"special_ids={self._special})"
        )


def _sentencepiece_token_to_id(model):
    def token_to_id(token: str) -> Optional[int]:
        index = model.piece_to_id(token)
        return index if model.id_to_piece(index) == token else None

    return token_to_id


def _sentencepiece_vocabulary(directory: str, path: str, extra_ids: int):
    """The SentencePiece model, its bos / eos / unk checked against the HF files."""
    vocabulary = seqio.SentencePieceVocabulary(path, extra_ids=extra_ids)
    model = vocabulary.tokenizer
    special = read_special_ids(
        directory, _sentencepiece_token_to_id(model), model.GetPieceSize(), require_eos=False
    )
    own = {"bos": model.bos_id(), "eos": model.eos_id(), "unk": model.unk_id()}
    for role, index in own.items():
        read = getattr(special, role)
        if read is not None and index >= 0 and read != index:
            raise ValueError(
                f"the HF files of {directory} give {role} id {read}, but the SentencePiece "
                f"model {path} has {role} id {index}"
            )
    return vocabulary


def vocabulary_from_hf_dir(directory: str, extra_ids: int = 0) -> seqio.Vocabulary:
    """The seqio vocabulary of a Hugging Face model or tokenizer directory.

    `tokenizer.model` / `spiece.model` (SentencePiece) comes first, as the project loads its
    own model; else `tokenizer.json` through the `tokenizers` package (see the module
    docstring). Special ids are read from the HF files.

    Raises:
      FileNotFoundError: `directory` is not a directory or has no tokenizer file.
      ValueError: the special ids are missing or inconsistent (`read_special_ids`).
    """
    directory = os.fspath(directory)
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"Hugging Face directory {directory} does not exist")
    for name in SENTENCEPIECE_FILES:
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            return _sentencepiece_vocabulary(directory, path, extra_ids)
    path = os.path.join(directory, TOKENIZER_JSON)
    if not os.path.isfile(path):
        present = sorted(os.listdir(directory))
        raise FileNotFoundError(
            f"no tokenizer in {directory}: expected {TOKENIZER_JSON} or one of "
            f"{', '.join(SENTENCEPIECE_FILES)} (files present: {present or 'none'})"
        )
    import tokenizers

    try:
        tokenizer = tokenizers.Tokenizer.from_file(path)
    except Exception as e:  # the tokenizers error does not name the file
        raise ValueError(f"{path} is not a tokenizer the `tokenizers` package reads: {e}") from e
    special = read_special_ids(
        directory, tokenizer.token_to_id, tokenizer.get_vocab_size(with_added_tokens=True)
    )
    vocabulary = HFTokenizerVocabulary(path, special, extra_ids=extra_ids)
    vocabulary._tokenizer = tokenizer
    return vocabulary


@dataclasses.dataclass(frozen=True)
class ThoughtIds:
    """Quiet-STaR's ids on a vocabulary, named as `QuietStarConfig`'s fields.

    thought_token_ids: (start, end) of thought; never sampled or emitted.
    thought_init_ids: the ids of "---", whose mean embedding initialises both thoughts.
    appended: whether the thought ids were appended after the vocabulary.
    """

    thought_token_ids: tuple
    thought_init_ids: tuple
    appended: bool


def _token_id(vocabulary, token: str) -> Optional[int]:
    if isinstance(vocabulary, HFTokenizerVocabulary):
        return vocabulary.token_to_id(token)
    return _sentencepiece_token_to_id(vocabulary.tokenizer)(token)


def quiet_star_thought_ids(vocabulary: seqio.Vocabulary) -> ThoughtIds:
    """The start / end-of-thought ids of Quiet-STaR on `vocabulary` and the ids of "---".

    As the paper adds "<|startthought|>" and "<|endthought|>" to the tokenizer, the ids are
    `(vocabulary.vocab_size, vocabulary.vocab_size + 1)`, after every id of the vocabulary
    (extra ids included), unless the vocabulary already holds both tokens (a tokenizer saved
    with them) or the project's "<thought>" / "</thought>" pieces: then their ids. The text
    "---" is encoded as the vocabulary encodes text (no special tokens), less a lone
    word-start piece; appended ids need no embedding rows: `start_thought` / `end_thought`
    are theirs.
    """
    encoded = [int(i) for i in vocabulary.encode(THOUGHT_INIT_TEXT)]
    # Without a lone word-start piece (SentencePiece's dummy prefix): the dashes only.
    init_ids = tuple(i for i in encoded if vocabulary.decode([i]).strip()) or tuple(encoded)
    if not init_ids:
        raise ValueError(f"{vocabulary} encodes {THOUGHT_INIT_TEXT!r} to no ids")
    for start, end in THOUGHT_TOKENS:
        ids = (_token_id(vocabulary, start), _token_id(vocabulary, end))
        if None not in ids:
            return ThoughtIds(ids, init_ids, appended=False)
    size = vocabulary.vocab_size
    return ThoughtIds((size, size + 1), init_ids, appended=True)
