"""QCRD's candidate rows: `CandidatesConverter`, and `QcrdCandidatesConverter` with each
question's gold label tokens.

`CandidatesConverter`: `encoder_input_tokens` [L] and, per candidate slot,
`candidate_input_tokens`/`candidate_target_tokens`/`candidate_loss_weights` [K, L] with
`candidate_mask` and `candidate_is_positive` [K].

The label (`candidate_label_tokens` [L], the task's `targets`) is what the positives'
self-consistency filter (`self_consistency.py`) and a self-adversarial sample's answer are
compared with.
"""

from __future__ import annotations

import tensorflow as tf

from t5x_rationale.data.converters import (
    AUTOTUNE,
    FeatureSpec,
    _Converter,
    _cut,
    _flag_first,
    ragged_slots,
)


class CandidatesConverter(_Converter):
    """Question plus a fixed number of positive and negative candidate targets per example.

    The task gives `inputs` [L_in], `positives` and `negatives` (ragged [n, None] token lists).
    Slots `0..num_positives-1` hold positives, the rest negatives; missing candidates are
    padding slots with `candidate_mask` 0, extra ones are dropped (counted as truncation)."""

    TASK_FEATURES = {
        "inputs": FeatureSpec(dtype=tf.int32),
        "positives": FeatureSpec(dtype=tf.int32, rank=2, sequence_dim=1),
        "negatives": FeatureSpec(dtype=tf.int32, rank=2, sequence_dim=1),
    }
    MODEL_FEATURES = {
        "encoder_input_tokens": FeatureSpec(dtype=tf.int32),
        "candidate_input_tokens": FeatureSpec(dtype=tf.int32, rank=2, sequence_dim=1),
        "candidate_target_tokens": FeatureSpec(dtype=tf.int32, rank=2, sequence_dim=1),
        "candidate_loss_weights": FeatureSpec(dtype=tf.float32, rank=2, sequence_dim=1),
        "candidate_mask": FeatureSpec(dtype=tf.int32, rank=1),
        "candidate_is_positive": FeatureSpec(dtype=tf.int32, rank=1),
        "candidate_truncated": FeatureSpec(dtype=tf.int32, rank=1),
    }

    def __init__(self, num_positives: int = 1, num_negatives: int = 1, pack: bool = False):
        if pack:
            raise ValueError(
                "CandidatesConverter does not pack: every row is one question with its "
                "candidate set; use pack=False"
            )
        if num_positives < 0 or num_negatives < 0 or num_positives + num_negatives == 0:
            raise ValueError(
                f"need at least one candidate slot, got num_positives={num_positives}, "
                f"num_negatives={num_negatives}"
            )
        self.num_positives, self.num_negatives = num_positives, num_negatives
        super().__init__(pack=False)

    def _convert_features(self, ds, task_feature_lengths):
        if task_feature_lengths["negatives"] != task_feature_lengths["positives"]:
            raise ValueError(
                f"positives and negatives need the same length, got {dict(task_feature_lengths)}"
            )
        return ds.map(
            lambda ex: self._candidate_row(ex, task_feature_lengths), num_parallel_calls=AUTOTUNE
        )

    def _candidate_row(self, ex, task_feature_lengths):
        """One example's question and dense candidate block."""
        n_in, n_c = task_feature_lengths["inputs"], task_feature_lengths["positives"]
        inputs, cut_in = _cut(ex["inputs"], n_in)
        pos, pos_mask, cut_p, pos_real = ragged_slots(ex["positives"], self.num_positives, n_c)
        neg, neg_mask, cut_n, neg_real = ragged_slots(ex["negatives"], self.num_negatives, n_c)
        targets = tf.concat([pos, neg], 0)
        k = self.num_positives + self.num_negatives
        return {
            "encoder_input_tokens": tf.pad(inputs, [[0, n_in - tf.size(inputs)]]),
            "candidate_input_tokens": tf.pad(targets[:, :-1], [[0, 0], [1, 0]]),
            "candidate_target_tokens": targets,
            "candidate_loss_weights": tf.cast(tf.concat([pos_real, neg_real], 0), tf.float32),
            "candidate_mask": tf.concat([pos_mask, neg_mask], 0),
            "candidate_is_positive": tf.cast(tf.range(k) < self.num_positives, tf.int32),
            "candidate_truncated": _flag_first(
                tf.zeros([k], tf.int32), tf.reduce_max(tf.stack([cut_in, cut_p, cut_n]))
            ),
        }

    def get_model_feature_lengths(self, task_feature_lengths):
        n_in, n_c = task_feature_lengths["inputs"], task_feature_lengths["positives"]
        k = self.num_positives + self.num_negatives
        lengths = {k_: n_c for k_ in self.MODEL_FEATURES}
        lengths.update(
            encoder_input_tokens=n_in,
            candidate_mask=k,
            candidate_is_positive=k,
            candidate_truncated=k,
        )
        return lengths


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
