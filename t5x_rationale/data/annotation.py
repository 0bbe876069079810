"""Sampled teacher outputs -> teacher-rationale JSONL rows (`teacher_jsonl.py`), with counts.

A sample is `rationale --> answer` (the chain-of-thought target format): the rationale is the
text before the last `-->`, the answer is `metrics.extract_answer` of the whole text. A sample
without the marker, with an empty rationale or no answer is unparseable; one cut off at the
length limit (no EOS) is unfinished; both are counted and left out. A parsed sample agrees when
its answer equals the gold label (normalised), or, for a question without a label, the
self-consistent majority answer (`self_consistency.consistent_rationales`). Agreeing samples
become `rationales`, the others `negatives` with their answers as `negative_labels`; repeated
texts, and negatives that repeat a rationale, are dropped and counted.
"""

from __future__ import annotations

import collections
import itertools
import json
from typing import Iterable, Optional, Sequence

from t5x_rationale.data.metrics import extract_answer, normalize_answer
from t5x_rationale.data.self_consistency import consistent_rationales

MARKER = "-->"
OUTCOMES = (
    "questions",
    "questions_written",
    "questions_without_positive",
    "samples",
    "agree",
    "disagree",
    "unparseable",
    "unfinished",
    "duplicates_dropped",
)


def parse_sample(text: str) -> Optional[tuple[str, str]]:
    """(rationale, answer) of one `rationale --> answer` sample, or None if it has neither."""
    if MARKER not in text:
        return None
    rationale = text[: text.rindex(MARKER)].strip()
    answer = extract_answer(text)
    if not rationale or answer is None:
        return None
    return rationale, answer


def target_answer(parsed: Sequence[tuple[str, str]], label: Optional[str]) -> Optional[str]:
    """The answer samples must reach: the gold label, else the majority of the parsed answers."""
    if label is not None and label.strip():
        return normalize_answer(label)
    texts = [f"{rationale} {MARKER} {answer}" for rationale, answer in parsed]
    keep = consistent_rationales(texts, "")
    return next((answer for (_, answer), k in zip(parsed, keep) if k), None)


def teacher_row(
    question: dict, samples: Sequence[dict], counts: collections.Counter
) -> Optional[dict]:
    """One question's teacher row (None: no agreeing sample), counting every outcome.

    `question` has `id`, `input` and `label` (None when unknown); `samples` are its
    generation rows (`text`, `finished`).
    """
    counts["questions"] += 1
    counts["samples"] += len(samples)
    parsed = []
    for sample in samples:
        if not sample.get("finished", True):
            counts["unfinished"] += 1
            continue
        one = parse_sample(sample["text"])
        counts["unparseable"] += one is None
        if one is not None:
            parsed.append(one)
    target = target_answer(parsed, question.get("label"))
    positives = [r for r, a in parsed if a == target]
    wrong = [(r, a) for r, a in parsed if a != target]
    counts["agree"] += len(positives)
    counts["disagree"] += len(wrong)
    rationales = _distinct(positives)
    negatives = [(r, a) for r, a in _distinct_pairs(wrong) if r not in rationales]
    counts["duplicates_dropped"] += len(positives) - len(rationales) + len(wrong) - len(negatives)
    if not rationales:
        counts["questions_without_positive"] += 1
        return None
    counts["questions_written"] += 1
    return {
        "id": question["id"],
        "input": question["input"],
        "label": question["label"] if question.get("label") is not None else target,
        "rationales": rationales,
        "negatives": [r for r, _ in negatives],
        "negative_labels": [a for _, a in negatives],
    }


def _distinct(texts: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(texts))


def _distinct_pairs(pairs: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """First (rationale, answer) of each distinct rationale text."""
    seen: dict[str, str] = {}
    for rationale, answer in pairs:
        seen.setdefault(rationale, answer)
    return list(seen.items())


def teacher_rows(
    questions: Sequence[dict], generations: Sequence[dict]
) -> tuple[list[dict], dict[str, int]]:
    """Teacher rows for every question with an agreeing sample, and the outcome counts.

    `generations` are `generation.read_generations` rows (grouped by `id`, in question order);
    a question without generations (its prompt was skipped as too long) is counted in
    `questions` and `prompts_skipped`.
    """
    by_id = {key: list(group) for key, group in itertools.groupby(generations, lambda r: r["id"])}
    counts: collections.Counter = collections.Counter({name: 0 for name in OUTCOMES})
    counts["prompts_skipped"] = 0
    rows = []
    for question in questions:
        samples = by_id.get(question["id"])
        if samples is None:
            counts["questions"] += 1
            counts["prompts_skipped"] += 1
            continue
        row = teacher_row(question, samples, counts)
        if row is not None:
            rows.append(row)
    return rows, dict(counts)


def teacher_jsonl_text(rows: Sequence[dict]) -> str:
    """The rows as teacher JSONL text (one object a line, UTF-8 kept)."""
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
