"""QCRD's two data streams read as one: a label batch and a candidate batch per step.

The label rows (`{name}_label`, packed as usual) and the candidate rows (`{name}_contrastive`
through `QcrdCandidatesConverter`) are separate seqio pipelines with the same batch size;
each step draws one batch from each, filters the candidate batch's positives for
self-consistency (`self_consistency.py`) and hands both to `merge` (the objective's
`merge_qcrd_batches`). Both positions are saved in checkpoints, so a resumed run reads on
exactly where it stopped.
"""

from __future__ import annotations

from typing import Callable, Iterator

import numpy as np
import seqio

from t5x_rationale.data.pipeline import TaskStream
from t5x_rationale.data.self_consistency import filter_positives


class QcrdStream(Iterator[dict]):
    """Merged host-local batches of a label stream and a candidate stream.

    Args:
      labels: the `{name}_label` stream.
      candidates: the `{name}_contrastive` stream (`QcrdCandidatesConverter`).
      merge: (label batch, candidate batch) -> one batch.
      vocabulary: decodes positives and labels for the self-consistency filter.
    """

    def __init__(
        self,
        labels: TaskStream,
        candidates: TaskStream,
        merge: Callable[[dict, dict], dict],
        vocabulary: seqio.Vocabulary,
    ):
        self.labels, self.candidates, self.merge = labels, candidates, merge
        self.vocabulary = vocabulary
        self.inconsistent_positives = 0

    def __next__(self) -> dict[str, np.ndarray]:
        label_batch = next(self.labels)
        candidate_batch, dropped = filter_positives(next(self.candidates), self.vocabulary)
        self.inconsistent_positives += dropped
        return self.merge(label_batch, candidate_batch)

    def stats(self) -> dict[str, float]:
        stats = self.labels.stats()
        stats.update({f"candidates/{k}": v for k, v in self.candidates.stats().items()})
        stats["data/inconsistent_positives"] = float(self.inconsistent_positives)
        return stats

    def get_state(self) -> dict:
        return {
            "labels": self.labels.get_state(),
            "candidates": self.candidates.get_state(),
            "inconsistent_positives": self.inconsistent_positives,
        }

    def set_state(self, state: dict) -> None:
        """Continues both streams; a fresh run passes `{"position": 0}`."""
        if "labels" not in state:
            if state.get("position", 0) != 0:
                raise ValueError(f"checkpointed data state {state} is not a QCRD stream's")
            state = {"labels": state, "candidates": state}
        self.labels.set_state(state["labels"])
        self.candidates.set_state(state["candidates"])
        self.inconsistent_positives = int(state.get("inconsistent_positives", 0))
