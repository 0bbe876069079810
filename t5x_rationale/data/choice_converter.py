"""`ChoicesConverter`: multiple-choice examples (`choice_tasks.py`) to PINTO batches.

Task features: `inputs` [L] (question and choices, no EOS), `rationale` [L] (no EOS),
`choices` [n, None] (each with EOS) and the scalar `choice_label`. Task feature lengths:
`inputs` and `rationale` cap the two parts of the encoder input (which is
`lengths['inputs'] + lengths['rationale']` long), `choices` caps each choice.

Model features (int32 unless noted):

- `encoder_input_tokens` [Le]: `inputs ++ rationale ++ EOS`, padded with 0 at the end;
- `rationale_mask` [Le]: 1 on the rationale's tokens (not the question, choices or EOS), the
  only tokens the PINTO loss perturbs;
- `choice_input_tokens` / `choice_target_tokens` / `choice_loss_weights` (float32)
  [C, Lc]: each choice as a decoder target (inputs shifted right with 0); missing choices
  are all-padding slots;
- `choice_mask` [C]: 1 on real choices; `choice_label` []: the correct choice's slot;
- `decoder_input_tokens` / `decoder_target_tokens` / `decoder_loss_weights` [Lc]: the
  correct choice alone, so the batch also initialises the model and sizes the step like any
  seq2seq batch (and a plain `token_loss` on it trains the answer given the rationale);
- `decoder_truncated` [Lc] (popped by the data stream): 1 on the first token when the
  question, rationale or a choice was cut, or when the row had more than C choices.
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


class ChoicesConverter(_Converter):
    """Question + choices + rationale encoder inputs and `[C, Lc]` choice targets per row.

    Args:
      num_choices: choice slots per row (C).
      eos_id: the vocabulary's end-of-sequence id, appended after the rationale.
      pack: must be False (a row is one question with its choices).
    """

    TASK_FEATURES = {
        "inputs": FeatureSpec(dtype=tf.int32),
        "rationale": FeatureSpec(dtype=tf.int32),
        "choices": FeatureSpec(dtype=tf.int32, rank=2, sequence_dim=1),
    }
    MODEL_FEATURES = {
        "encoder_input_tokens": FeatureSpec(dtype=tf.int32),
        "rationale_mask": FeatureSpec(dtype=tf.int32),
        "choice_input_tokens": FeatureSpec(dtype=tf.int32, rank=2, sequence_dim=1),
        "choice_target_tokens": FeatureSpec(dtype=tf.int32, rank=2, sequence_dim=1),
        "choice_loss_weights": FeatureSpec(dtype=tf.float32, rank=2, sequence_dim=1),
        "choice_mask": FeatureSpec(dtype=tf.int32, rank=1),
        "choice_label": FeatureSpec(dtype=tf.int32, rank=0),
        "decoder_input_tokens": FeatureSpec(dtype=tf.int32),
        "decoder_target_tokens": FeatureSpec(dtype=tf.int32),
        "decoder_loss_weights": FeatureSpec(dtype=tf.float32),
        "decoder_truncated": FeatureSpec(dtype=tf.int32),
    }

    def __init__(self, num_choices: int = 4, eos_id: int = 1, pack: bool = False):
        if pack:
            raise ValueError(
                "ChoicesConverter does not pack: every row is one question with its choices; "
                "use pack=False"
            )
        if num_choices < 1:
            raise ValueError(f"num_choices must be at least 1, got {num_choices}")
        self.num_choices, self.eos_id = num_choices, eos_id
        super().__init__(pack=False)

    def _encoder(self, ex, n_in: int, n_r: int):
        """(encoder tokens, rationale mask, cut flag): `inputs ++ rationale ++ EOS`, padded."""
        prefix, cut_in = _cut(ex["inputs"], n_in)
        rationale, cut_r = _cut(ex["rationale"], n_r - 1)  # room for the EOS
        tokens = tf.concat([prefix, rationale, [self.eos_id]], 0)
        mask = tf.concat(
            [tf.zeros_like(prefix), tf.ones_like(rationale), tf.zeros([1], tf.int32)], 0
        )
        n = n_in + n_r
        pad = [[0, n - tf.size(tokens)]]
        tokens, mask = (tf.ensure_shape(tf.pad(x, pad), [n]) for x in (tokens, mask))
        return tokens, mask, tf.maximum(cut_in, cut_r)

    def _convert_features(self, ds, task_feature_lengths):
        n_in, n_r = task_feature_lengths["inputs"], task_feature_lengths["rationale"]
        n_c = task_feature_lengths["choices"]
        if n_r < 2:
            raise ValueError(f"the rationale length must be at least 2 (EOS included), got {n_r}")
        if "choice_label" not in ds.element_spec:
            raise ValueError(
                "ChoicesConverter needs the scalar 'choice_label' feature of a multiple-choice "
                "task (choice_tasks.register_choice_task); the dataset has "
                f"{sorted(ds.element_spec)}"
            )

        def convert(ex):
            encoder, rationale_mask, cut_enc = self._encoder(ex, n_in, n_r)
            targets, mask, cut_c, real = ragged_slots(ex["choices"], self.num_choices, n_c)
            label = tf.cast(ex["choice_label"], tf.int32)
            inputs = tf.pad(targets[:, :-1], [[0, 0], [1, 0]])
            answer = tf.minimum(label, self.num_choices - 1)
            weights = tf.cast(real, tf.float32)
            return {
                "encoder_input_tokens": encoder,
                "rationale_mask": rationale_mask,
                "choice_input_tokens": inputs,
                "choice_target_tokens": targets,
                "choice_loss_weights": weights,
                "choice_mask": mask,
                "choice_label": label,
                "decoder_input_tokens": inputs[answer],
                "decoder_target_tokens": targets[answer],
                "decoder_loss_weights": weights[answer],
                "decoder_truncated": _flag_first(targets[0], tf.maximum(cut_enc, cut_c)),
            }

        return ds.map(convert, num_parallel_calls=AUTOTUNE)

    def get_model_feature_lengths(self, task_feature_lengths):
        n_c = task_feature_lengths["choices"]
        n_enc = task_feature_lengths["inputs"] + task_feature_lengths["rationale"]
        lengths = {name: n_c for name in self.MODEL_FEATURES}
        lengths.update(
            encoder_input_tokens=n_enc,
            rationale_mask=n_enc,
            choice_mask=self.num_choices,
            choice_label=1,
        )
        return lengths
