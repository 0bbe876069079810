"""How `train` runs QCRD: the paired data stream, the trainer with ring and discriminator,
the discriminator's pretraining in the fresh state, and the self-adversarial sampler."""

from __future__ import annotations

import dataclasses
from typing import Iterator

import jax
import numpy as np
import seqio

from t5x_rationale.data.metrics import extract_answer
from t5x_rationale.data.pipeline import StreamSpec, TaskStream
from t5x_rationale.data.qcrd_converter import QcrdCandidatesConverter
from t5x_rationale.data.qcrd_stream import QcrdStream
from t5x_rationale.data.self_consistency import filter_positives
from t5x_rationale.data.vocab import text_before_eos
from t5x_rationale.objectives.qcrd import merge_qcrd_batches
from t5x_rationale.qcrd.negatives import SelfAdversarialNegatives
from t5x_rationale.qcrd.settings import QcrdSettings
from t5x_rationale.qcrd.trainer import QcrdTrainer, QcrdTrainState
from t5x_rationale.runtime.partitioning import Partitioner


class QcrdRun:
    """QCRD's parts of one training run.

    Args:
      settings: QCRD's settings.
      partitioner: the run's mesh.
      vocabulary: decodes positives, samples and labels on the host.
    """

    def __init__(
        self,
        settings: QcrdSettings,
        partitioner: Partitioner,
        vocabulary: seqio.Vocabulary,
    ):
        self.settings = settings
        self.partitioner, self.vocabulary = partitioner, vocabulary
        self._negatives = None

    def _candidate_stream(self, label_spec: StreamSpec, seed: int) -> TaskStream:
        s = self.settings
        spec = dataclasses.replace(
            label_spec,
            mixture_or_task=s.candidate_task,
            task_feature_lengths=dict(s.candidate_lengths),
            seed=seed,
        )
        return TaskStream(
            spec,
            QcrdCandidatesConverter(s.num_positives, s.num_negatives),
            host_rows=self.partitioner.host_rows(spec.batch_size),
            process_index=jax.process_index(),
            process_count=jax.process_count(),
        )

    def stream(self, labels: TaskStream) -> QcrdStream:
        """The label stream paired with the candidate stream (same batch size and seed)."""
        candidates = self._candidate_stream(labels.spec, labels.spec.seed)
        return QcrdStream(labels, candidates, merge_qcrd_batches, self.vocabulary)

    def trainer(self, *args, **kwargs) -> QcrdTrainer:
        return QcrdTrainer(*args, settings=self.settings, **kwargs)

    def prepare(self, trainer: QcrdTrainer) -> SelfAdversarialNegatives:
        """The per-step hook that appends the sampled negative slots."""
        if self._negatives is None:
            eos = self.vocabulary.eos_id
            self._negatives = SelfAdversarialNegatives(trainer, self.disagrees, eos_id=eos)
        return self._negatives

    def disagrees(self, sample: np.ndarray, label: np.ndarray):
        """A sample's stated answer against the gold label (None: it states none)."""
        answer = extract_answer(text_before_eos(self.vocabulary, sample))
        if answer is None:
            return None
        return answer != extract_answer(text_before_eos(self.vocabulary, label))

    def with_finish_init(self, trainer: QcrdTrainer, fresh: tuple, label_spec: StreamSpec):
        """`train`'s (fresh init, source) with `finish_init` after the init."""
        init, source = fresh
        return (lambda: self.finish_init(trainer, init(), label_spec)), source

    def finish_init(
        self, trainer: QcrdTrainer, state: QcrdTrainState, label_spec: StreamSpec
    ) -> QcrdTrainState:
        """A fresh state's ring filled with its (possibly warm-started) params, and D
        pretrained on its own pass over the candidate task (seed + 1, never saved: the same
        on every fresh start)."""
        state = trainer.refill_ring(state)
        steps = self.settings.discriminator_pretrain_steps
        if not steps:
            return state
        stream = self._candidate_stream(label_spec, label_spec.seed + 1)
        state, history = trainer.pretrain_discriminator(state, self._global(stream), steps)
        self.pretrain_history = history
        return state

    def _global(self, stream: TaskStream) -> Iterator[dict]:
        while True:
            batch, _ = filter_positives(next(stream), self.vocabulary)
            yield self.partitioner.host_batch_to_global(batch)
