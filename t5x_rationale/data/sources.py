"""seqio sources of teacher-rationale rows and of plain-text lines.

`rationale_source` serves rows of teacher-rationale JSONL files (`teacher_jsonl.py`) or
GSM8K files (`gsm8k.py`); `text_line_source` serves the non-blank lines of text files.
Paths are local files or glob patterns (expanded with Python's `glob`, sorted). Only the
source classes import TensorFlow and seqio, on first use, so importing this module (and the
readers it re-exports for its callers) works without TF installed.
"""

from __future__ import annotations

import functools
import glob
import os
import random
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from t5x_rationale.data.gsm8k import read_gsm8k
from t5x_rationale.data.reading import DataFormatError, ReadResult, ReadStats
from t5x_rationale.data.teacher_jsonl import LIST_FIELDS, SCALAR_FIELDS, read_rationale_jsonl

if TYPE_CHECKING:  # pragma: no cover - typing only
    import seqio
    import tensorflow as tf

__all__ = [
    "DataFormatError",
    "ReadResult",
    "ReadStats",
    "expand_paths",
    "rationale_source",
    "read_gsm8k",
    "read_rationale_jsonl",
    "rows_to_dataset",
    "text_line_source",
]


def expand_paths(paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]) -> list[str]:
    """Expand glob patterns (each sorted) into files, in the order given, without repeats.

    A pattern (or plain path) matching no file is a FileNotFoundError naming it.
    """
    patterns = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    files: list[str] = []
    for pattern in map(os.fspath, patterns):
        matches = sorted(p for p in glob.glob(pattern) if os.path.isfile(p))
        if not matches:
            raise FileNotFoundError(f"no file matches {pattern!r}")
        files.extend(m for m in matches if m not in files)
    return files


def _make_reader(
    reader: str,
    *,
    skip_invalid: bool,
    require_rationales: bool,
    allow_extra_fields: bool,
    keep_annotations: bool,
) -> Callable[[str], ReadResult]:
    """The per-file read function for `reader`, rejecting options it does not use."""
    if reader == "jsonl":
        if keep_annotations:
            raise ValueError("keep_annotations applies to reader='gsm8k' only")
        return functools.partial(
            read_rationale_jsonl,
            skip_invalid=skip_invalid,
            require_rationales=require_rationales,
            allow_extra_fields=allow_extra_fields,
        )
    if reader == "gsm8k":
        if not require_rationales or allow_extra_fields:
            raise ValueError(
                "require_rationales and allow_extra_fields apply to reader='jsonl' only"
            )
        return functools.partial(
            read_gsm8k, keep_annotations=keep_annotations, skip_invalid=skip_invalid
        )
    raise ValueError(f"unknown reader {reader!r}; expected 'jsonl' or 'gsm8k'")


def rows_to_dataset(rows: Sequence[Mapping[str, Any]]) -> tf.data.Dataset:
    """A tf.data.Dataset of teacher-schema rows, in order.

    Scalars become tf.string scalars and list fields tf.string vectors of shape [None]
    (an absent optional list field is an empty vector).
    Built with from_tensor_slices over ragged tensors (not from_generator) so that the
    iterator can be checkpointed; the data is embedded in the graph, which suits
    datasets up to a few hundred MB.
    """
    import tensorflow as tf

    columns: dict[str, Any] = {
        key: tf.constant([row[key] for row in rows], dtype=tf.string) for key in SCALAR_FIELDS
    }
    for key in LIST_FIELDS:
        lists = [row.get(key, ()) for row in rows]
        flat = [item for items in lists for item in items]
        columns[key] = tf.RaggedTensor.from_row_lengths(
            tf.constant(flat, dtype=tf.string, shape=[len(flat)]),
            tf.constant([len(items) for items in lists], dtype=tf.int64),
        )
    # The identity map turns the ragged slices into plain [None] tensors.
    return tf.data.Dataset.from_tensor_slices(columns).map(lambda example: example)


class _RationaleFiles:
    """The plain-Python half of the rationale source: which files a split has, reading them.

    `_source_classes` mixes it into seqio's `FunctionDataSource`, whose constructor it calls.
    `last_read_stats` maps each file path to the `ReadStats` of its latest read.
    """

    def __init__(
        self,
        split_to_paths: Mapping[str, str | Sequence[str]],
        read_file: Callable[[str], ReadResult],
        caching_permitted: bool,
    ):
        self._split_to_paths = dict(split_to_paths)
        self._read_file = read_file
        self.last_read_stats: dict[str, ReadStats] = {}
        super().__init__(
            dataset_fn=self._dataset_fn_impl,
            splits=self._split_to_paths.keys(),
            caching_permitted=caching_permitted,
        )

    def files(self, split: str) -> list[str]:
        """The split's files after glob expansion, sorted per pattern.

        (Not `list_shards`: seqio would then ask this source to shard by file,
        which FunctionDataSource refuses; Task shards the examples instead.)
        """
        return expand_paths(self._split_paths(split))

    def num_input_examples(self, split: str) -> int:
        """Valid rows in the split (reads the files)."""
        return sum(len(result.rows) for result in self._read_split(split, None))

    def _split_paths(self, split: str) -> str | Sequence[str]:
        if split not in self._split_to_paths:
            raise ValueError(f"unknown split {split!r}; have {sorted(self._split_to_paths)}")
        return self._split_to_paths[split]

    def _read_split(self, split: str, rng: random.Random | None) -> list[ReadResult]:
        """Read every file of `split`, in sorted or (with rng) shuffled file order."""
        files = self.files(split)
        if rng is not None:
            rng.shuffle(files)
        results = [self._read_file(path) for path in files]
        self.last_read_stats.update((r.path, r.stats()) for r in results)
        return results

    def _dataset_fn_impl(
        self, split: str, shuffle_files: bool, seed: int | None = None
    ) -> tf.data.Dataset:
        rng = random.Random(seed) if shuffle_files else None
        results = self._read_split(split, rng)
        return rows_to_dataset([row for result in results for row in result.rows])

    def __repr__(self) -> str:
        return f"{type(self).__name__}(split_to_paths={self._split_to_paths!r})"


@functools.cache
def _source_classes() -> tuple[type, type]:
    """Define the seqio source classes on first use, so importing needs no TF."""
    import seqio
    import tensorflow as tf

    class RationaleDataSource(_RationaleFiles, seqio.FunctionDataSource):
        """Teacher-schema rows parsed eagerly in Python from JSONL files.

        `num_input_examples(split)` reads the split's files and counts valid rows.
        """

    class TextLineDictSource(seqio.FileDataSource):
        """Non-blank lines of text files as {"text": tf.string} examples."""

        def __init__(self, split_to_paths: Mapping[str, str | Sequence[str]]):
            self._split_to_paths = dict(split_to_paths)

            def read_file(path: tf.Tensor) -> tf.data.Dataset:
                lines = tf.data.TextLineDataset(path)
                lines = lines.filter(lambda s: tf.strings.length(tf.strings.strip(s)) > 0)
                return lines.map(lambda s: {"text": s})

            super().__init__(read_file_fn=read_file, split_to_filepattern=self._split_to_paths)

        def list_shards(self, split: str) -> list[str]:
            """The split's files after glob expansion (FileNotFoundError if none)."""
            return expand_paths(self._split_to_paths[split])

    return RationaleDataSource, TextLineDictSource


def rationale_source(
    split_to_paths: Mapping[str, str | Sequence[str]],
    *,
    reader: str = "jsonl",
    skip_invalid: bool = False,
    require_rationales: bool = True,
    allow_extra_fields: bool = False,
    keep_annotations: bool = False,
    caching_permitted: bool = True,
) -> seqio.DataSource:
    """A seqio source of teacher-schema rows from JSONL files (reader "jsonl" or "gsm8k").

    Files are only touched when a dataset is built (or counted), so errors surface there
    and name the file. Examples come in file order, then line order; with
    `shuffle_files` the file list is shuffled with the seed (rows within a file keep
    their order; shuffle examples downstream). Reader options are passed to
    `read_rationale_jsonl` / `read_gsm8k`; the seqio source serves only the schema
    fields.
    """
    read_file = _make_reader(
        reader,
        skip_invalid=skip_invalid,
        require_rationales=require_rationales,
        allow_extra_fields=allow_extra_fields,
        keep_annotations=keep_annotations,
    )
    source_cls, _ = _source_classes()
    return source_cls(split_to_paths, read_file, caching_permitted)


def text_line_source(split_to_paths: Mapping[str, str | Sequence[str]]) -> seqio.DataSource:
    """A seqio source of plain-text documents, one per non-blank line, as {"text": ...}."""
    _, source_cls = _source_classes()
    return source_cls(split_to_paths)
