"""seqio feature converters: task features (`inputs`, `targets`, ...) to model batches.

Every converter trims sequences itself and records which examples were cut, so truncation
is counted (`*_truncated` features, reported in the training metrics) instead of silent.
Packing concatenates several examples per row with segment ids and positions, T5X style.

Model features produced (all int32 unless noted; `length` axis last):

- encoder-decoder: `encoder_input_tokens`, `decoder_input_tokens`, `decoder_target_tokens`,
  `decoder_loss_weights` (float32) and, when packed, `encoder_segment_ids`,
  `encoder_positions`, `decoder_segment_ids`, `decoder_positions`;
- decoder-only: the `decoder_*` features over `inputs ++ targets`, loss weights on the
  targets only (optionally everywhere) and, for a bidirectional prefix,
  `decoder_causal_attention` (T5X name: 1 on prefix positions of the shifted inputs);
- multi-task variants add `decoder_task_ids` (the example's `task_id` on each target token,
  0 on padding), so a loss can be normalised per task inside a packed batch;
- `with_loss_start` (`counterfactual.py`): no loss before an example's `targets_loss_start`.

QCRD's candidate rows (`CandidatesConverter`) are in `qcrd_converter.py`.

`decoder_truncated` / `candidate_truncated` mark truncated examples (1 on the first target
token of each cut example); the data stream pops them and counts them on the host.
"""

from __future__ import annotations

from typing import Mapping

import seqio
import tensorflow as tf

FeatureConverter = seqio.FeatureConverter  # the type entry points name
FeatureSpec = seqio.FeatureConverter.FeatureSpec
AUTOTUNE = tf.data.AUTOTUNE
TRUNCATION_FEATURES = ("decoder_truncated", "candidate_truncated")


def _cut(seq: tf.Tensor, length: int) -> tuple[tf.Tensor, tf.Tensor]:
    """The first `length` items of `seq` and whether anything was dropped (int32 0/1)."""
    return seq[:length], tf.cast(tf.size(seq) > length, tf.int32)


def _flag_first(length_like: tf.Tensor, flag: tf.Tensor) -> tf.Tensor:
    """A per-token feature that is `flag` on the first token and 0 elsewhere."""
    n = tf.size(length_like)
    return tf.concat([tf.reshape(flag, [1]), tf.zeros([n - 1], tf.int32)], 0)[:n]


def _shift_right(targets: tf.Tensor, segment_ids: tf.Tensor | None, real: tf.Tensor) -> tf.Tensor:
    """Decoder inputs: targets shifted right with 0, restarting at 0 in each packed segment.

    Positions whose target is padding (`real` 0) get 0 too (not the shifted EOS), so padding
    is all 0.
    """
    shifted = seqio.utils.make_autoregressive_inputs(targets, sequence_id=segment_ids, bos_id=0)
    return shifted * tf.cast(real, shifted.dtype)


def _pack_or_pad(ds: tf.data.Dataset, lengths: Mapping[str, int], pack: bool) -> tf.data.Dataset:
    """Packs or pads the features in `lengths`, telling padding apart from a real 0.

    seqio packs a feature by its count of non-zero items and pads with 0, but a real item may
    be 0: a 0/1 flag, or a text token at id 0 (byte-level BPE vocabularies: "!" in Llama 3 and
    Qwen2). So every feature is stored + 1 meanwhile; afterwards it is back at its values (0 on
    padding) and `{name}_real` is 1 on the real items of `inputs` and `targets`.
    """
    ds = ds.map(
        lambda ex: {k: v + 1 if k in lengths else v for k, v in ex.items()},
        num_parallel_calls=AUTOTUNE,
    )
    if pack:
        ds = seqio.utils.trim_and_pack_dataset(ds, lengths)
    else:
        ds = seqio.utils.trim_and_pad_dataset(ds, lengths)

    def restore(ex):
        real = {
            f"{k}_real": tf.cast(ex[k] > 0, tf.int32) for k in ("inputs", "targets") if k in lengths
        }
        return {**ex, **{k: tf.maximum(ex[k] - 1, 0) for k in lengths}, **real}

    return ds.map(restore, num_parallel_calls=AUTOTUNE)


def ragged_slots(sequences, count: int, length: int):
    """A ragged [n, None] set of sequences (a dense [n, L] one is taken as ragged) as a dense
    [count, length] block, padded or cut: (block, slot mask [count], cut flag, real tokens
    [count, length]: 1 on a sequence's tokens, id 0 included)."""
    if isinstance(sequences, tf.Tensor):
        sequences = tf.RaggedTensor.from_tensor(sequences)
    n = sequences.nrows(out_type=tf.int32)
    kept = sequences[:count]
    too_long = tf.reduce_any(kept.row_lengths() > length)
    dense = kept.to_tensor(default_value=0, shape=[count, length])
    real = tf.ones_like(kept).to_tensor(default_value=0, shape=[count, length])
    mask = tf.cast(tf.range(count) < n, tf.int32)
    return dense, mask, tf.cast(tf.logical_or(n > count, too_long), tf.int32), real


def _require_scalar(ds: tf.data.Dataset, converter: str, feature: str) -> None:
    spec = ds.element_spec.get(feature)
    if spec is None or spec.shape.rank != 0 or not spec.dtype.is_integer:
        raise ValueError(
            f"{converter} needs a scalar integer {feature!r} feature in every example "
            "(tasks.add_task_id adds task_id; the {name}_counterfactual tasks add both); "
            f"the dataset has {sorted(ds.element_spec)}"
        )


def _loss_from(ex: dict, length: tf.Tensor) -> tf.Tensor:
    """int32 [length]: 1 from the example's `targets_loss_start` on, 0 before it."""
    return tf.cast(tf.range(length) >= tf.cast(ex["targets_loss_start"], tf.int32), tf.int32)


class _Converter(seqio.FeatureConverter):
    """Shared scaffolding: lengths are checked and trimmed here, never asserted by seqio."""

    PACKING_FEATURE_DTYPES = {}
    with_task_ids = False
    with_loss_start = False

    def __init__(self, pack: bool = True):
        super().__init__(pack=pack, apply_length_check=False)

    def _check_scalars(self, ds: tf.data.Dataset) -> None:
        needs = {"task_id": self.with_task_ids, "targets_loss_start": self.with_loss_start}
        for feature in (f for f, needed in needs.items() if needed):
            _require_scalar(ds, type(self).__name__, feature)


class EncDecConverter(_Converter):
    """Encoder-decoder batches from `inputs`/`targets`, optionally packed."""

    TASK_FEATURES = {"inputs": FeatureSpec(dtype=tf.int32), "targets": FeatureSpec(dtype=tf.int32)}
    MODEL_FEATURES = {
        "encoder_input_tokens": FeatureSpec(dtype=tf.int32),
        "decoder_input_tokens": FeatureSpec(dtype=tf.int32),
        "decoder_target_tokens": FeatureSpec(dtype=tf.int32),
        "decoder_loss_weights": FeatureSpec(dtype=tf.float32),
        "decoder_truncated": FeatureSpec(dtype=tf.int32),
    }
    PACKING_FEATURE_DTYPES = {
        "encoder_segment_ids": tf.int32,
        "encoder_positions": tf.int32,
        "decoder_segment_ids": tf.int32,
        "decoder_positions": tf.int32,
    }

    def _trim(self, ex, lengths):
        inputs, cut_in = _cut(ex["inputs"], lengths["inputs"])
        targets, cut_t = _cut(ex["targets"], lengths["targets"])
        out = {
            "inputs": inputs,
            "targets": targets,
            "targets_truncated": _flag_first(targets, tf.maximum(cut_in, cut_t)),
        }
        if self.with_task_ids:
            out["targets_task"] = tf.fill(tf.shape(targets), tf.cast(ex["task_id"], tf.int32))
        if self.with_loss_start:
            out["targets_loss"] = _loss_from(ex, tf.size(ex["targets"]))[: lengths["targets"]]
        return out

    def _convert_features(self, ds, task_feature_lengths):
        self._check_scalars(ds)
        lengths = dict(task_feature_lengths)
        ds = ds.map(lambda ex: self._trim(ex, lengths), num_parallel_calls=AUTOTUNE)
        packed = {
            "inputs": lengths["inputs"],
            "targets": lengths["targets"],
            "targets_truncated": lengths["targets"],
        }
        if self.with_task_ids:
            packed["targets_task"] = lengths["targets"]
        if self.with_loss_start:
            packed["targets_loss"] = lengths["targets"]
        ds = _pack_or_pad(ds, packed, self.pack)
        return ds.map(self._model_features, num_parallel_calls=AUTOTUNE)

    def _model_features(self, ex):
        segments = ex.get("targets_segment_ids")
        out = {
            "encoder_input_tokens": ex["inputs"],
            "decoder_input_tokens": _shift_right(ex["targets"], segments, ex["targets_real"]),
            "decoder_target_tokens": ex["targets"],
            "decoder_loss_weights": tf.cast(ex["targets_real"], tf.float32),
            "decoder_truncated": ex["targets_truncated"],
        }
        if self.with_task_ids:
            out["decoder_task_ids"] = ex["targets_task"]
        if self.with_loss_start:
            out["decoder_loss_weights"] *= tf.cast(ex["targets_loss"], tf.float32)
        if self.pack:
            out.update(
                encoder_segment_ids=ex["inputs_segment_ids"],
                encoder_positions=ex["inputs_positions"],
                decoder_segment_ids=segments,
                decoder_positions=ex["targets_positions"],
            )
        return out

    def get_model_feature_lengths(self, task_feature_lengths):
        n_in, n_t = task_feature_lengths["inputs"], task_feature_lengths["targets"]
        lengths = {k: n_t for k in self.MODEL_FEATURES}
        lengths["encoder_input_tokens"] = n_in
        if self.pack:
            lengths.update(
                encoder_segment_ids=n_in,
                encoder_positions=n_in,
                decoder_segment_ids=n_t,
                decoder_positions=n_t,
            )
        return lengths


class MultiTaskEncDecConverter(EncDecConverter):
    """`EncDecConverter` that keeps each example's `task_id` on its target tokens."""

    MODEL_FEATURES = {
        **EncDecConverter.MODEL_FEATURES,
        "decoder_task_ids": FeatureSpec(dtype=tf.int32),
    }
    with_task_ids = True


class DecoderConverter(_Converter):
    """Decoder-only batches over `inputs ++ targets` (prefix LM) or `targets` alone (plain LM).

    Args:
      pack: pack several examples per row.
      loss_on_targets_only: weight only target tokens (the prompt gets no loss).
      bidirectional_prefix: let prompt tokens attend to each other (T5X prefix LM); off by
        default so that KV-cached decoding (causal) sees what training saw.
      inputs: whether the task has an `inputs` feature; False for plain LM over `targets`.
    """

    MODEL_FEATURES = {
        "decoder_input_tokens": FeatureSpec(dtype=tf.int32),
        "decoder_target_tokens": FeatureSpec(dtype=tf.int32),
        "decoder_loss_weights": FeatureSpec(dtype=tf.float32),
        "decoder_truncated": FeatureSpec(dtype=tf.int32),
    }
    PACKING_FEATURE_DTYPES = {"decoder_segment_ids": tf.int32, "decoder_positions": tf.int32}

    def __init__(
        self,
        pack: bool = True,
        loss_on_targets_only: bool = True,
        bidirectional_prefix: bool = False,
        inputs: bool = True,
    ):
        self.TASK_FEATURES = {"targets": FeatureSpec(dtype=tf.int32)}
        if inputs:
            self.TASK_FEATURES["inputs"] = FeatureSpec(dtype=tf.int32)
        self.MODEL_FEATURES = dict(type(self).MODEL_FEATURES)
        if bidirectional_prefix:
            if not inputs:
                raise ValueError("bidirectional_prefix needs inputs=True (a prompt to attend over)")
            self.MODEL_FEATURES["decoder_causal_attention"] = FeatureSpec(dtype=tf.int32)
        self.loss_on_targets_only = loss_on_targets_only
        self.bidirectional_prefix = bidirectional_prefix
        self.has_inputs = inputs
        super().__init__(pack=pack)

    def _trim(self, ex, lengths):
        targets, cut = _cut(ex["targets"], lengths["targets"])
        prompt = tf.zeros([0], tf.int32)
        if self.has_inputs:
            prompt, cut_in = _cut(ex["inputs"], lengths["inputs"])
            cut = tf.maximum(cut, cut_in)
        n_in, n_t = tf.size(prompt), tf.size(targets)
        seq = tf.concat([prompt, targets], 0)
        target_weight = tf.ones([n_t], tf.int32)
        if self.with_loss_start:
            target_weight = _loss_from(ex, tf.size(ex["targets"]))[:n_t]
        prompt_weight = (
            tf.zeros([n_in], tf.int32) if self.loss_on_targets_only else tf.ones([n_in], tf.int32)
        )
        out = {
            "targets": seq,
            "targets_loss": tf.concat([prompt_weight, target_weight], 0),
            "targets_truncated": _flag_first(seq, cut),
        }
        if self.bidirectional_prefix:  # shifted inputs: BOS and every prompt token are prefix
            out["targets_prefix"] = tf.cast(tf.range(n_in + n_t) <= n_in, tf.int32)
        if self.with_task_ids:
            out["targets_task"] = tf.fill([n_in + n_t], tf.cast(ex["task_id"], tf.int32))
        return out

    def _convert_features(self, ds, task_feature_lengths):
        self._check_scalars(ds)
        lengths = dict(task_feature_lengths)
        total = self._total_length(lengths)
        ds = ds.map(lambda ex: self._trim(ex, lengths), num_parallel_calls=AUTOTUNE)
        names = ["targets", "targets_loss", "targets_truncated"]
        names += ["targets_prefix"] * self.bidirectional_prefix + [
            "targets_task"
        ] * self.with_task_ids
        ds = _pack_or_pad(ds, {k: total for k in names}, self.pack)
        return ds.map(self._model_features, num_parallel_calls=AUTOTUNE)

    def _total_length(self, lengths):
        return lengths["targets"] + (lengths["inputs"] if self.has_inputs else 0)

    def _model_features(self, ex):
        segments = ex.get("targets_segment_ids")
        tokens = ex["targets"]
        out = {
            "decoder_input_tokens": _shift_right(tokens, segments, ex["targets_real"]),
            "decoder_target_tokens": tokens,
            "decoder_loss_weights": tf.cast(ex["targets_loss"] * ex["targets_real"], tf.float32),
            "decoder_truncated": ex["targets_truncated"],
        }
        if self.bidirectional_prefix:
            out["decoder_causal_attention"] = ex["targets_prefix"]
        if self.with_task_ids:
            out["decoder_task_ids"] = ex["targets_task"]
        if self.pack:
            out.update(decoder_segment_ids=segments, decoder_positions=ex["targets_positions"])
        return out

    def get_model_feature_lengths(self, task_feature_lengths):
        total = self._total_length(task_feature_lengths)
        lengths = {k: total for k in self.MODEL_FEATURES}
        if self.pack:
            lengths.update(decoder_segment_ids=total, decoder_positions=total)
        return lengths


class MultiTaskDecoderConverter(DecoderConverter):
    """`DecoderConverter` that keeps each example's `task_id` on its tokens."""

    with_task_ids = True

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.MODEL_FEATURES["decoder_task_ids"] = FeatureSpec(dtype=tf.int32)
