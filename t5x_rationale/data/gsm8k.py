"""The GSM8K JSONL format (`reader="gsm8k"`), read into teacher-schema rows.

Rows ``{"question": str, "answer": str}``, where ``answer`` is the rationale, one step per
line with calculator notes such as ``<<48/2=24>>``, then a last line ``#### <number>``.
`read_gsm8k` converts each row into the teacher schema (`teacher_jsonl.py`): id
``"<file name>-<line>"`` (e.g. ``"train.jsonl-17"``), input = question, label = the number
with commas removed, rationales = [the steps joined with "\\n", calculator notes removed
unless ``keep_annotations``], and no negatives or choices. Other keys are ignored. Errors
and skipping follow `reading.py`.
"""

from __future__ import annotations

import os
import re
from typing import Any

from t5x_rationale.data.reading import ReadResult, RowError, read_rows, string_field

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
    question = string_field(obj, "question", non_empty=True)
    answer = string_field(obj, "answer", non_empty=True)
    if answer.count("####") != 1:
        found = "no" if "####" not in answer else "more than one"
        raise RowError("answer", f"expected one final '#### <number>' line, found {found}")
    steps, _, final = answer.partition("####")
    final = final.strip()
    if not _GSM8K_LABEL_RE.fullmatch(final):
        raise RowError("answer", f"final answer after '####' is not a number: {final!r}")
    rationale = _gsm8k_rationale(steps, keep_annotations=keep_annotations)
    if not rationale:
        raise RowError("answer", "no rationale before the '####' line")
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

    return read_rows(path, parse, skip_invalid=skip_invalid)
