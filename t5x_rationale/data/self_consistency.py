"""Self-consistency filtering of teacher rationales (QCRD's positives, docs/methods.md 3.1).

With several teacher rationales for one question, the positives are those whose stated
answer is the most common among them (the self-consistent majority). Ties go to the gold
label's answer when it is among the tied, else to the answer stated first. One rationale is
kept as it is. Dropped rationales are masked out of the candidate set and counted
(`data/inconsistent_positives`), never lost silently. Runs on the host, on decoded text.
"""

from __future__ import annotations

import collections
from typing import Sequence

import numpy as np
import seqio

from t5x_rationale.data.metrics import extract_answer, normalize_answer
from t5x_rationale.data.vocab import text_before_eos


def consistent_rationales(rationales: Sequence[str], label: str) -> list[bool]:
    """Which of one question's rationales to keep."""
    if len(rationales) < 2:
        return [True] * len(rationales)
    answers = [extract_answer(r) for r in rationales]
    counts = collections.Counter(a for a in answers if a is not None)
    if not counts:
        return [True] * len(rationales)
    best = max(counts.values())
    tied = [a for a in dict.fromkeys(answers) if a is not None and counts[a] == best]
    gold = normalize_answer(label) if label.strip() else None
    target = gold if gold in tied else tied[0]
    return [a == target for a in answers]


def filter_positives(
    batch: dict[str, np.ndarray], vocabulary: seqio.Vocabulary
) -> tuple[dict[str, np.ndarray], int]:
    """(the batch with inconsistent positives' `candidate_mask` set to 0, how many).

    Reads a `QcrdCandidatesConverter` batch: positives are the slots with
    `candidate_is_positive` 1, the label is `candidate_label_tokens`.
    """
    mask = batch["candidate_mask"].copy()
    dropped = 0
    for row in range(mask.shape[0]):
        slots = np.flatnonzero((batch["candidate_is_positive"][row] > 0) & (mask[row] > 0))
        texts = [
            text_before_eos(vocabulary, batch["candidate_target_tokens"][row, s]) for s in slots
        ]
        label = text_before_eos(vocabulary, batch["candidate_label_tokens"][row])
        for slot, keep in zip(slots, consistent_rationales(texts, label)):
            if not keep:
                mask[row, slot] = 0
                dropped += 1
    return {**batch, "candidate_mask": mask}, dropped
