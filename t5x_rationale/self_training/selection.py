"""STaR's filter: which generated rationales are kept, and the iteration's counts.

A chain-of-thought output reads `rationale --> answer`. A first-pass output is kept when its
answer is the gold one; a wrong question's rationalization (prompted with the hint) is kept
when, with every echo of the hint taken out, it still reaches the gold answer. Kept rows are
teacher-JSONL rows (`data/teacher_jsonl.py`) whose input is the question without the hint.
"""

from __future__ import annotations

from typing import Optional, Sequence

from t5x_rationale.data.metrics import extract_answer, normalize_answer
from t5x_rationale.self_training.hints import mentions_hint, strip_hint

SEPARATOR = "-->"


def split_output(text: str) -> tuple[Optional[str], Optional[str]]:
    """(rationale, parsed answer) of a CoT output; (None, None) without a `-->`."""
    if SEPARATOR not in text:
        return None, None
    rationale = text.rsplit(SEPARATOR, 1)[0].strip()
    return rationale or None, extract_answer(text)


def judge(question: dict, text: str, hinted_text: Optional[str]) -> dict:
    """One question's record: its first output, its rationalization (if it was wrong) and
    which rationale, if any, is kept."""
    gold = normalize_answer(question["label"])
    rationale, answer = split_output(text)
    record = {
        "id": question["id"],
        "input": question["input"],
        "label": question["label"],
        "text": text,
        "answer": answer,
        "correct": answer is not None and answer == gold,
        "hinted_text": hinted_text,
        "hinted_answer": None,
        "hint_echoed": False,
        "kept": None,
        "rationale": None,
    }
    if record["correct"]:
        return _keep(record, rationale, "generated")
    if hinted_text is None:
        return record
    cleaned, echoed = strip_hint(hinted_text)
    hinted_rationale, hinted_answer = split_output(cleaned)
    record.update(hinted_answer=hinted_answer, hint_echoed=echoed)
    if hinted_answer is not None and hinted_answer == gold:
        return _keep(record, hinted_rationale, "rationalized")
    return record


def _keep(record: dict, rationale: Optional[str], how: str) -> dict:
    """Keeps `rationale` unless it is empty or still speaks of a hint."""
    if rationale is None:
        return record
    rationale, _ = strip_hint(rationale)
    if rationale and not mentions_hint(rationale):
        record.update(kept=how, rationale=rationale)
    return record


def kept_rows(records: Sequence[dict]) -> list[dict]:
    """The kept rationales as teacher-JSONL rows (no hint anywhere)."""
    return [
        {"id": r["id"], "input": r["input"], "label": r["label"], "rationales": [r["rationale"]]}
        for r in records
        if r["kept"]
    ]


def _pct(count: int, total: int) -> float:
    return round(100.0 * count / total, 2) if total else 0.0


def iteration_stats(records: Sequence[dict]) -> dict:
    """Counts and percentages of one iteration, from its question records."""
    total = len(records)
    wrong = [r for r in records if not r["correct"]]
    attempted = [r for r in wrong if r["hinted_text"] is not None]
    counts = {
        "questions": total,
        "correct": sum(r["correct"] for r in records),
        "unparseable": sum(r["answer"] is None for r in records),
        "rationalize_attempts": len(attempted),
        "rationalize_unparseable": sum(r["hinted_answer"] is None for r in attempted),
        "rationalized": sum(r["kept"] == "rationalized" for r in records),
        "hint_echoed": sum(r["hint_echoed"] for r in attempted),
        "kept_generated": sum(r["kept"] == "generated" for r in records),
    }
    counts["kept"] = counts["kept_generated"] + counts["rationalized"]
    counts["correct_pct"] = _pct(counts["correct"], total)
    counts["rationalized_pct"] = _pct(counts["rationalized"], total)
    counts["coverage_pct"] = _pct(counts["kept"], total)
    return counts
