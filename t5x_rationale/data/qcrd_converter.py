"""QCRD's candidate rows: `CandidatesConverter` plus each question's gold label tokens.

The label (`candidate_label_tokens` [L], the task's `targets`) is what the positives'
self-consistency filter (`self_consistency.py`) and a self-adversarial sample's answer are
compared with.
"""

from __future__ import annotations

import tensorflow as tf

from t5x_rationale.data.converters import CandidatesConverter, FeatureSpec, _cut


class QcrdCandidatesConverter(CandidatesConverter):
    """`CandidatesConverter` rows with `candidate_label_tokens` (the gold label).

    Task feature lengths: `inputs`, `positives`, `negatives` and `targets` (the label).
    """

    TASK_FEATURES = {
        **CandidatesConverter.TASK_FEATURES,
        "targets": FeatureSpec(dtype=tf.int32),
    }
    MODEL_FEATURES = {
        **CandidatesConverter.MODEL_FEATURES,
        "candidate_label_tokens": FeatureSpec(dtype=tf.int32),
    }

    def _candidate_row(self, ex, task_feature_lengths):
        row = super()._candidate_row(ex, task_feature_lengths)
        n_label = task_feature_lengths["targets"]
        label, cut = _cut(ex["targets"], n_label)
        truncated = row["candidate_truncated"]
        flag = tf.maximum(truncated[0], cut)
        return {
            **row,
            "candidate_label_tokens": tf.pad(label, [[0, n_label - tf.size(label)]]),
            "candidate_truncated": tf.tensor_scatter_nd_update(truncated, [[0]], [flag]),
        }

    def get_model_feature_lengths(self, task_feature_lengths):
        out = super().get_model_feature_lengths(task_feature_lengths)
        out.update(candidate_label_tokens=task_feature_lengths["targets"])
        return out
