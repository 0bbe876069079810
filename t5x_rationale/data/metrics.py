"""Task metrics: exact match and parsed-answer accuracy (seqio `metric_fns` signature).

A chain-of-thought output ends in `"... --> 42"`; a label output is just `"42"`; teacher-style
prose ends in `"The answer is 42."`. `extract_answer` finds the answer in any of these and
normalises numbers (`"1,000"` -> `"1000"`, `"5.0"` -> `"5"`), so the same metric scores
label-only, step-by-step and CoT students, and the synthetic corpus's own rationales.
"""

from __future__ import annotations

import decimal
import re
from typing import Optional, Sequence

_NUMBER = re.compile(r"-?\$?\d[\d,]*(?:\.\d+)?")
_MARKERS = (re.compile(re.escape("-->")), re.compile(r"answer is", re.IGNORECASE))
# A whole text that is one number: sign, "$", digits (commas grouping thousands), fraction.
_NUMBER_TEXT = re.compile(r"(?P<sign>[+-]?)\$?(?P<int>\d{1,3}(?:,\d{3})+|\d*)(?P<frac>\.\d*)?")


def parse_number(text: str) -> str | None:
    """Canonical form of a numeric answer, or None if `text` is not a number.

    Used to compare answers: "1,000" -> "1000", "5.0" -> "5", "$18" -> "18",
    "-0.50" -> "-0.5". Commas must group thousands ("1,2" is not a number).
    """
    match = _NUMBER_TEXT.fullmatch(text.strip())
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


def normalize_answer(text: str) -> str:
    """Canonical form of an answer: a number as `parse_number` writes it, else the text
    without surrounding whitespace and a final period."""
    text = text.strip()
    return parse_number(text.rstrip(".")) or text.rstrip(".").strip()


def _first_number(text: str) -> Optional[str]:
    for match in _NUMBER.finditer(text):
        number = parse_number(match.group().rstrip(","))
        if number is not None:
            return number
    return None


def extract_answer(text: str) -> Optional[str]:
    """The answer in a model output, or None when it gives none.

    After the last '-->' (chain of thought), else after the last 'answer is' (teacher
    prose): the first number there, else that text. Without a marker: the whole text if it is
    a number or has none, else its last number.
    """
    for marker in _MARKERS:
        matches = list(marker.finditer(text))
        if matches:
            tail = text[matches[-1].end() :].strip()
            return (_first_number(tail) or normalize_answer(tail)) if tail else None
    if not text.strip():
        return None
    whole = normalize_answer(text)
    numbers = [
        n for n in (parse_number(m.group().rstrip(",")) for m in _NUMBER.finditer(text)) if n
    ]
    if parse_number(whole) is not None or not numbers:
        return whole
    return numbers[-1]


def answer_postprocessor(output: str, example=None, is_target: bool = False) -> Optional[str]:
    """seqio postprocess_fn: decoded text (bytes or str) -> the normalised answer."""
    del example, is_target
    if isinstance(output, bytes):
        output = output.decode("utf-8")
    return extract_answer(output)


def answer_accuracy(targets: Sequence, predictions: Sequence) -> dict[str, float]:
    """Percentage of predictions whose parsed answer equals the target's."""
    _check_lengths(targets, predictions)
    hits = sum(p is not None and p == t for t, p in zip(targets, predictions))
    return {"answer_accuracy": 100.0 * hits / max(len(targets), 1)}


def exact_match(targets: Sequence, predictions: Sequence) -> dict[str, float]:
    """Percentage of predictions exactly equal to their target (after whitespace stripping)."""
    _check_lengths(targets, predictions)
    norm = lambda x: x.decode("utf-8").strip() if isinstance(x, bytes) else str(x).strip()  # noqa: E731
    hits = sum(norm(t) == norm(p) for t, p in zip(targets, predictions))
    return {"exact_match": 100.0 * hits / max(len(targets), 1)}


def _check_lengths(targets, predictions):
    if len(targets) != len(predictions):
        raise ValueError(f"{len(targets)} targets but {len(predictions)} predictions")
