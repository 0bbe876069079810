"""Task metrics: exact match and parsed-answer accuracy (seqio `metric_fns` signature).

A chain-of-thought output ends in `"... --> 42"`; a label output is just `"42"`; teacher-style
prose ends in `"The answer is 42."`. `extract_answer` finds the answer in any of these and
normalises numbers (`"1,000"` -> `"1000"`, `"5.0"` -> `"5"`), so the same metric scores
label-only, step-by-step and CoT students.
"""

from __future__ import annotations

import re
from typing import Optional, Sequence

_NUMBER = re.compile(r"-?\$?\d[\d,]*(?:\.\d+)?")
_ANSWER_IS = re.compile(r"answer is\s*:?\s*(.+?)\s*\.?\s*$", re.IGNORECASE)


def normalize_answer(text: str) -> str:
    """Canonical form of an answer: numbers without commas, '$' or trailing zeros; else stripped text."""
    text = text.strip().rstrip(".").strip()
    match = _NUMBER.fullmatch(text.replace(" ", ""))
    if not match:
        return text
    number = text.replace(" ", "").replace(",", "").replace("$", "")
    if "." in number:
        number = number.rstrip("0").rstrip(".")
    return "0" if number in ("-0", "") else number


def extract_answer(text: str) -> Optional[str]:
    """The answer in a model output: after the last '-->', else after 'answer is', else the text."""
    if "-->" in text:
        tail = text.rsplit("-->", 1)[1]
    else:
        match = _ANSWER_IS.search(text)
        tail = match.group(1) if match else text
    tail = tail.strip()
    if not tail:
        return None
    numbers = _NUMBER.findall(tail)
    return normalize_answer(numbers[0] if len(numbers) == 1 else tail)


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
