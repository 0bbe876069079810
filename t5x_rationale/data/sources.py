"""Readers for teacher-rationale data, and seqio sources that serve it.

Teacher-rationale JSONL (`reader="jsonl"`)
------------------------------------------
One JSON object per line::

    {"id": "q17", "input": "...", "label": "72",
     "rationales": ["step 1 ...", "..."],
     "negatives": ["a wrong rationale"], "negative_labels": ["70"],
     "choices": ["70", "72"]}

Required fields:

- ``id``: string; an int is accepted and converted to str. Must be non-empty and
  unique within the file (ids are not compared across files).
- ``input``: non-empty string (the question or prompt).
- ``label``: string (the correct answer).
- ``rationales``: list of non-empty strings (correct teacher rationales). At least one
  unless the reader is called with ``require_rationales=False``.

Optional fields (absent means an empty list in the rows that readers return):

- ``negatives``: list of non-empty strings, incorrect rationales.
- ``negative_labels``: list of strings, the wrong answer each negative reaches. Either
  absent/empty or exactly as long as ``negatives``.
- ``choices``: list of strings, multiple-choice options. When non-empty, ``label`` must
  be one of them (an empty list means "not multiple choice").

Any other key is an error naming it (this catches typos such as ``"rationale"``) unless
``allow_extra_fields=True``; allowed extra keys are kept in the Python rows but are not
served by the seqio source. Blank lines are skipped and line numbers count every line of
the file, starting at 1.

GSM8K JSONL (`reader="gsm8k"`)
------------------------------
Rows ``{"question": str, "answer": str}``, where ``answer`` is the rationale, one step per
line with calculator notes such as ``<<48/2=24>>``, then a last line ``#### <number>``.
`read_gsm8k` converts each row into the teacher schema: id ``"<file name>-<line>"`` (e.g.
``"train.jsonl-17"``), input = question, label = the number with commas removed,
rationales = [the steps joined with "\\n", calculator notes removed unless
``keep_annotations``], and no negatives or choices. Other keys are ignored.

Errors
------
Every problem in a file raises `DataFormatError`, whose message names the file, the line
and the field, e.g. ``data/train.jsonl:17: field 'label': expected a string, got int
(42)``. With ``skip_invalid=True`` a bad row is recorded in `ReadResult.skipped` and a
warning reports the count; a file with no valid rows is still an error. Rows are never
dropped silently.

seqio
-----
`rationale_source` and `text_line_source` build seqio data sources. Only they import
TensorFlow and seqio, so the pure-Python readers work without TF installed. Paths are
local files or glob patterns (expanded with Python's `glob`, sorted).
"""

from __future__ import annotations

import dataclasses
import decimal
import functools
import glob
import json
import logging
import os
import random
import re
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

if TYPE_CHECKING:  # pragma: no cover - typing only
    import seqio
    import tensorflow as tf

log = logging.getLogger(__name__)

REQUIRED_FIELDS = ("id", "input", "label", "rationales")
OPTIONAL_LIST_FIELDS = ("negatives", "negative_labels", "choices")
LIST_FIELDS = ("rationales",) + OPTIONAL_LIST_FIELDS
SCALAR_FIELDS = ("id", "input", "label")
KNOWN_FIELDS = REQUIRED_FIELDS + OPTIONAL_LIST_FIELDS

# How many skip reasons the warning for skipped rows quotes.
_REASONS_IN_WARNING = 3


# ----------------------------------------------------------------------------- errors


class DataFormatError(ValueError):
    """A data file breaks its format; the message names file, line and field."""

    def __init__(self, path: str, line: int | None, field: str | None, reason: str):
        self.path = path
        self.line = line
        self.field = field
        self.reason = reason
        super().__init__(_located(path, line, _describe(field, reason)))


class _RowError(Exception):
    """Raised inside row parsing; the reading loop adds path and line."""

    def __init__(self, field: str | None, reason: str):
        super().__init__(reason)
        self.field = field
        self.reason = reason


def _describe(field: str | None, reason: str) -> str:
    """'field 'x': reason', or the bare reason for row-level problems."""
    return reason if field is None else f"field '{field}': {reason}"


def _located(path: str, line: int | None, text: str) -> str:
    """Prefix a message with 'path:line: ' (or 'path: ' for whole-file problems)."""
    return f"{path}: {text}" if line is None else f"{path}:{line}: {text}"


def _json_type(value: Any) -> str:
    """JSON-flavoured type name of a parsed value, for error messages."""
    names = {type(None): "null", bool: "bool", dict: "object", str: "string"}
    return names.get(type(value), type(value).__name__)


def _got(value: Any) -> str:
    """'got int (42)': the type and a short repr of an offending value."""
    text = repr(value)
    if len(text) > 40:
        text = text[:37] + "..."
    return f"got {_json_type(value)} ({text})"


# ----------------------------------------------------------------------------- results


@dataclasses.dataclass(frozen=True)
class ReadResult:
    """Rows read from one file, and the (line, reason) of every row skipped."""

    path: str
    rows: list[dict[str, Any]]
    skipped: list[tuple[int, str]]

    def stats(self) -> ReadStats:
        """Counts without the rows, small enough to keep around."""
        return ReadStats(self.path, len(self.rows), tuple(self.skipped))


@dataclasses.dataclass(frozen=True)
class ReadStats:
    """How many rows a file gave and which lines were skipped (and why)."""

    path: str
    num_rows: int
    skipped: tuple[tuple[int, str], ...]

    @property
    def num_skipped(self) -> int:
        """Number of invalid rows left out (only non-zero with skip_invalid)."""
        return len(self.skipped)


# ----------------------------------------------------------------------------- numbers

_NUMBER_RE = re.compile(r"(?P<sign>[+-]?)\$?(?P<int>\d{1,3}(?:,\d{3})+|\d*)(?P<frac>\.\d*)?")


def parse_number(text: str) -> str | None:
    """Canonical form of a numeric answer, or None if `text` is not a number.

    Used to compare answers: "1,000" -> "1000", "5.0" -> "5", "$18" -> "18",
    "-0.50" -> "-0.5". Commas must group thousands ("1,2" is not a number).
    """
    match = _NUMBER_RE.fullmatch(text.strip())
    if match is None:
        return None
    integer, frac = match["int"].replace(",", ""), match["frac"] or ""
    if not integer and len(frac) < 2:  # no digits at all: "", "$", "."
        return None
    value = decimal.Decimal(f"{match['sign']}{integer or '0'}{frac}")
    if value == 0:
        return "0"
    canonical = format(value, "f")
    if "." in canonical:
        canonical = canonical.rstrip("0").rstrip(".")
    return canonical


# ----------------------------------------------------------------------------- reading


def _read_lines(path: str) -> list[tuple[int, bytes]]:
    """(line number, raw bytes) of every non-blank line; FileNotFoundError names path."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"rationale data file not found: {path}")
    with open(path, "rb") as f:
        return [(n, raw) for n, raw in enumerate(f, start=1) if raw.strip()]


def _decode_object(raw: bytes, line: int) -> dict[str, Any]:
    """Parse one line as a JSON object (a leading UTF-8 BOM on line 1 is allowed)."""
    try:
        text = raw.decode("utf-8-sig" if line == 1 else "utf-8")
    except UnicodeDecodeError as e:
        raise _RowError(None, f"not valid UTF-8: {e.reason} (byte {e.start + 1})")
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise _RowError(None, f"not valid JSON: {e.msg} (column {e.colno})")
    if not isinstance(obj, dict):
        raise _RowError(None, f"expected a JSON object, {_got(obj)}")
    return obj


def _read_rows(
    path: str,
    parse_row: Callable[[dict[str, Any], int], dict[str, Any]],
    *,
    skip_invalid: bool,
) -> ReadResult:
    """Shared loop: decode, parse and de-duplicate rows; skip or raise on errors."""
    path = os.fspath(path)
    lines = _read_lines(path)
    if not lines:
        raise DataFormatError(path, None, None, "no rows (the file is empty)")
    rows: list[dict[str, Any]] = []
    skipped: list[tuple[int, str]] = []
    first_line_of_id: dict[str, int] = {}
    for line, raw in lines:
        try:
            row = parse_row(_decode_object(raw, line), line)
            _check_unique_id(row["id"], line, first_line_of_id)
        except _RowError as e:
            if not skip_invalid:
                raise DataFormatError(path, line, e.field, e.reason) from None
            skipped.append((line, _describe(e.field, e.reason)))
            continue
        rows.append(row)
    _report_skipped(path, len(lines), rows, skipped)
    return ReadResult(path, rows, skipped)


def _check_unique_id(row_id: str, line: int, first_line_of_id: dict[str, int]) -> None:
    """Record `row_id`; a second occurrence in the same file is an error."""
    if row_id in first_line_of_id:
        first = first_line_of_id[row_id]
        raise _RowError("id", f"duplicate id {row_id!r} (first seen on line {first})")
    first_line_of_id[row_id] = line


def _report_skipped(
    path: str, num_lines: int, rows: list[dict[str, Any]], skipped: list[tuple[int, str]]
) -> None:
    """Warn about skipped rows; fail if nothing valid is left."""
    if not skipped:
        return
    first = "; ".join(f"line {n}: {why}" for n, why in skipped[:_REASONS_IN_WARNING])
    if not rows:
        raise DataFormatError(
            path, None, None, f"all {num_lines} rows are invalid (first: {first})"
        )
    log.warning(
        "%s: skipped %d of %d rows as invalid; first: %s",
        path,
        len(skipped),
        num_lines,
        first,
    )


# ----------------------------------------------------------------------------- fields


def _string(obj: dict[str, Any], field: str, *, non_empty: bool = False) -> str:
    """A required string field."""
    if field not in obj:
        raise _RowError(field, "missing required field")
    return _check_string(obj[field], field, non_empty=non_empty)


def _check_string(value: Any, field: str, *, non_empty: bool) -> str:
    """`value` itself, if it is a (non-empty, when asked) string."""
    if not isinstance(value, str):
        raise _RowError(field, f"expected a string, {_got(value)}")
    if non_empty and not value.strip():
        raise _RowError(field, "must not be empty")
    return value


def _string_list(
    obj: dict[str, Any], field: str, *, required: bool, non_empty_items: bool
) -> list[str]:
    """A list-of-strings field; absent optional fields give []."""
    if field not in obj:
        if required:
            raise _RowError(field, "missing required field")
        return []
    value = obj[field]
    if not isinstance(value, list):
        raise _RowError(field, f"expected a list of strings, {_got(value)}")
    return [
        _check_string(item, f"{field}[{i}]", non_empty=non_empty_items)
        for i, item in enumerate(value)
    ]


def _row_id(obj: dict[str, Any]) -> str:
    """The `id` field as a non-empty string (ints are converted)."""
    if "id" not in obj:
        raise _RowError("id", "missing required field")
    value = obj["id"]
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return _check_string(value, "id", non_empty=True)


def _parse_teacher_row(
    obj: dict[str, Any], *, require_rationales: bool, allow_extra_fields: bool
) -> dict[str, Any]:
    """Validate one teacher-schema object and return it normalised."""
    extra = [key for key in obj if key not in KNOWN_FIELDS]
    if extra and not allow_extra_fields:
        raise _RowError(
            extra[0],
            f"unknown field (expected: {', '.join(KNOWN_FIELDS)}; "
            "pass allow_extra_fields=True to allow it)",
        )
    row: dict[str, Any] = {
        "id": _row_id(obj),
        "input": _string(obj, "input", non_empty=True),
        "label": _string(obj, "label"),
        "rationales": _string_list(obj, "rationales", required=True, non_empty_items=True),
        "negatives": _string_list(obj, "negatives", required=False, non_empty_items=True),
        "negative_labels": _string_list(
            obj, "negative_labels", required=False, non_empty_items=False
        ),
        "choices": _string_list(obj, "choices", required=False, non_empty_items=False),
    }
    _check_row_consistency(row, require_rationales=require_rationales)
    row.update({key: obj[key] for key in extra})
    return row


def _check_row_consistency(row: dict[str, Any], *, require_rationales: bool) -> None:
    """Cross-field rules: rationales present, label among choices, label counts match."""
    if require_rationales and not row["rationales"]:
        raise _RowError(
            "rationales",
            "needs at least one rationale (pass require_rationales=False to allow none)",
        )
    if row["choices"] and row["label"] not in row["choices"]:
        raise _RowError("label", f"{row['label']!r} is not one of the choices {row['choices']!r}")
    num_labels, num_negatives = len(row["negative_labels"]), len(row["negatives"])
    if num_labels and num_labels != num_negatives:
        raise _RowError(
            "negative_labels",
            f"has {num_labels} entries but 'negatives' has {num_negatives}",
        )


def read_rationale_jsonl(
    path: str | os.PathLike[str],
    *,
    skip_invalid: bool = False,
    require_rationales: bool = True,
    allow_extra_fields: bool = False,
) -> ReadResult:
    """Read a teacher-rationale JSONL file (format in the module docstring).

    Returns normalised rows in file order. Raises FileNotFoundError for a missing file
    and DataFormatError for an empty file or a bad row (or, with skip_invalid, when no
    row is valid).
    """

    def parse(obj: dict[str, Any], line: int) -> dict[str, Any]:
        return _parse_teacher_row(
            obj, require_rationales=require_rationales, allow_extra_fields=allow_extra_fields
        )

    return _read_rows(os.fspath(path), parse, skip_invalid=skip_invalid)


# ----------------------------------------------------------------------------- GSM8K

_ANNOTATION_RE = re.compile(r"<<[^<>]*>>")
_GSM8K_LABEL_RE = re.compile(r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?")


def _gsm8k_rationale(text: str, *, keep_annotations: bool) -> str:
    """The steps before '####': stripped lines, blank ones dropped, notes removed."""
    if not keep_annotations:
        text = _ANNOTATION_RE.sub("", text)
    steps = [step.strip() for step in text.split("\n")]
    return "\n".join(step for step in steps if step)


def _parse_gsm8k_row(obj: dict[str, Any], row_id: str, *, keep_annotations: bool) -> dict[str, Any]:
    """Convert one GSM8K object into a teacher-schema row."""
    question = _string(obj, "question", non_empty=True)
    answer = _string(obj, "answer", non_empty=True)
    if answer.count("####") != 1:
        found = "no" if "####" not in answer else "more than one"
        raise _RowError("answer", f"expected one final '#### <number>' line, found {found}")
    steps, _, final = answer.partition("####")
    final = final.strip()
    if not _GSM8K_LABEL_RE.fullmatch(final):
        raise _RowError("answer", f"final answer after '####' is not a number: {final!r}")
    rationale = _gsm8k_rationale(steps, keep_annotations=keep_annotations)
    if not rationale:
        raise _RowError("answer", "no rationale before the '####' line")
    return {
        "id": row_id,
        "input": question,
        "label": final.replace(",", ""),
        "rationales": [rationale],
        "negatives": [],
        "negative_labels": [],
        "choices": [],
    }


def read_gsm8k(
    path: str | os.PathLike[str],
    *,
    keep_annotations: bool = False,
    skip_invalid: bool = False,
) -> ReadResult:
    """Read a GSM8K JSONL file into teacher-schema rows (see the module docstring)."""
    path = os.fspath(path)
    basename = os.path.basename(path)

    def parse(obj: dict[str, Any], line: int) -> dict[str, Any]:
        return _parse_gsm8k_row(obj, f"{basename}-{line}", keep_annotations=keep_annotations)

    return _read_rows(path, parse, skip_invalid=skip_invalid)


# ----------------------------------------------------------------------------- paths


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


# ----------------------------------------------------------------------------- seqio


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


@functools.cache
def _source_classes() -> tuple[type, type]:
    """Define the seqio source classes on first use, so importing needs no TF."""
    import seqio
    import tensorflow as tf

    class RationaleDataSource(seqio.FunctionDataSource):
        """Teacher-schema rows parsed eagerly in Python from JSONL files.

        `last_read_stats` maps each file path to the `ReadStats` of its latest read.
        `num_input_examples(split)` reads the split's files and counts valid rows.
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
