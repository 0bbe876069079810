"""The teacher-rationale JSONL format (`reader="jsonl"`): its reader and row validation.

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

- ``negatives``: list of non-empty strings, incorrect rationales; none may repeat a
  rationale's text (a contrastive loss would push the same text both ways).
- ``negative_labels``: list of strings, the wrong answer each negative reaches. Either
  absent/empty or exactly as long as ``negatives``.
- ``choices``: list of strings, multiple-choice options. When non-empty, ``label`` must
  be one of them (an empty list means "not multiple choice").

Any other key is an error naming it (this catches typos such as ``"rationale"``) unless
``allow_extra_fields=True``; allowed extra keys are kept in the Python rows but are not
served by the seqio source. Errors and skipping follow `reading.py`.
"""

from __future__ import annotations

import os
from typing import Any

from t5x_rationale.data.reading import (
    ReadResult,
    RowError,
    check_string,
    read_rows,
    string_field,
    string_list_field,
)

REQUIRED_FIELDS = ("id", "input", "label", "rationales")
OPTIONAL_LIST_FIELDS = ("negatives", "negative_labels", "choices")
LIST_FIELDS = ("rationales",) + OPTIONAL_LIST_FIELDS
SCALAR_FIELDS = ("id", "input", "label")
KNOWN_FIELDS = REQUIRED_FIELDS + OPTIONAL_LIST_FIELDS


def _row_id(obj: dict[str, Any]) -> str:
    """The `id` field as a non-empty string (ints are converted)."""
    if "id" not in obj:
        raise RowError("id", "missing required field")
    value = obj["id"]
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return check_string(value, "id", non_empty=True)


def _parse_teacher_row(
    obj: dict[str, Any], *, require_rationales: bool, allow_extra_fields: bool
) -> dict[str, Any]:
    """Validate one teacher-schema object and return it normalised."""
    extra = [key for key in obj if key not in KNOWN_FIELDS]
    if extra and not allow_extra_fields:
        raise RowError(
            extra[0],
            f"unknown field (expected: {', '.join(KNOWN_FIELDS)}; "
            "pass allow_extra_fields=True to allow it)",
        )
    row: dict[str, Any] = {
        "id": _row_id(obj),
        "input": string_field(obj, "input", non_empty=True),
        "label": string_field(obj, "label"),
        "rationales": string_list_field(obj, "rationales", required=True, non_empty_items=True),
        "negatives": string_list_field(obj, "negatives", required=False, non_empty_items=True),
        "negative_labels": string_list_field(
            obj, "negative_labels", required=False, non_empty_items=False
        ),
        "choices": string_list_field(obj, "choices", required=False, non_empty_items=False),
    }
    _check_row_consistency(row, require_rationales=require_rationales)
    row.update({key: obj[key] for key in extra})
    return row


def _check_row_consistency(row: dict[str, Any], *, require_rationales: bool) -> None:
    """Cross-field rules: rationales present, label among choices, no negative repeats a
    rationale, label counts match."""
    if require_rationales and not row["rationales"]:
        raise RowError(
            "rationales",
            "needs at least one rationale (pass require_rationales=False to allow none)",
        )
    if row["choices"] and row["label"] not in row["choices"]:
        raise RowError("label", f"{row['label']!r} is not one of the choices {row['choices']!r}")
    positives = {r.strip(): i for i, r in enumerate(row["rationales"])}
    for j, negative in enumerate(row["negatives"]):
        if negative.strip() in positives:
            i = positives[negative.strip()]
            raise RowError(f"negatives[{j}]", f"is the same text as rationales[{i}]")
    num_labels, num_negatives = len(row["negative_labels"]), len(row["negatives"])
    if num_labels and num_labels != num_negatives:
        raise RowError(
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

    return read_rows(os.fspath(path), parse, skip_invalid=skip_invalid)
