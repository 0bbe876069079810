"""What the JSONL readers share: errors, results, the reading loop and field checks.

Every problem in a file raises `DataFormatError`, whose message names the file, the line
and the field, e.g. ``data/train.jsonl:17: field 'label': expected a string, got int
(42)``. With ``skip_invalid=True`` a bad row is recorded in `ReadResult.skipped` and a
warning reports the count; a file with no valid rows is still an error. Rows are never
dropped silently. Blank lines are skipped and line numbers count every line of the file,
starting at 1.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Any, Callable, Iterator

log = logging.getLogger(__name__)

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


class RowError(Exception):
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
        raise RowError(None, f"not valid UTF-8: {e.reason} (byte {e.start + 1})")
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise RowError(None, f"not valid JSON: {e.msg} (column {e.colno})")
    if not isinstance(obj, dict):
        raise RowError(None, f"expected a JSON object, {_got(obj)}")
    return obj


def json_objects(path: str, what: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-blank line of a JSONL file that is not a row file
    (questions, few-shot examples, inference inputs), read lazily; `what` names the file in
    a FileNotFoundError, and a bad line raises `DataFormatError` naming file and line."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} {path} does not exist")
    with open(path, "rb") as f:
        for line, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                yield line, _decode_object(raw, line)
            except RowError as e:
                raise DataFormatError(path, line, e.field, e.reason) from None


def read_rows(
    path: str,
    parse_row: Callable[[dict[str, Any], int], dict[str, Any]],
    *,
    skip_invalid: bool,
) -> ReadResult:
    """Shared loop: decode, parse and de-duplicate rows; skip or raise on errors.

    `parse_row(obj, line)` turns one JSON object into a row with an "id", raising `RowError`.
    """
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
        except RowError as e:
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
        raise RowError("id", f"duplicate id {row_id!r} (first seen on line {first})")
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


def string_field(obj: dict[str, Any], field: str, *, non_empty: bool = False) -> str:
    """A required string field."""
    if field not in obj:
        raise RowError(field, "missing required field")
    return check_string(obj[field], field, non_empty=non_empty)


def check_string(value: Any, field: str, *, non_empty: bool) -> str:
    """`value` itself, if it is a (non-empty, when asked) string."""
    if not isinstance(value, str):
        raise RowError(field, f"expected a string, {_got(value)}")
    if non_empty and not value.strip():
        raise RowError(field, "must not be empty")
    return value


def string_list_field(
    obj: dict[str, Any], field: str, *, required: bool, non_empty_items: bool
) -> list[str]:
    """A list-of-strings field; absent optional fields give []."""
    if field not in obj:
        if required:
            raise RowError(field, "missing required field")
        return []
    value = obj[field]
    if not isinstance(value, list):
        raise RowError(field, f"expected a list of strings, {_got(value)}")
    return [
        check_string(item, f"{field}[{i}]", non_empty=non_empty_items)
        for i, item in enumerate(value)
    ]
