"""SCOTT counterfactual training data (Wang et al. 2023, arXiv 2305.01879): rows and converters.

From one teacher-JSONL example (question q, label a, rationale r, negatives r' with their wrong
answers a' in `negative_labels`) the counterfactual tasks make

| row     | inputs                    | targets                                       | loss   |
|---------|---------------------------|-----------------------------------------------|--------|
| factual | `"[factual] " + q`        | `"[factual] " + r + " So the answer is " + a` | all    |
| counter | `"[counterfactual] " + q` | `r' + " So the answer is " + a'`              | a', EOS|

`task_id` tells the rows apart: `FACTUAL_TASK_ID` (1), `COUNTERFACTUAL_TASK_ID` (2), and
`FACTUAL_ONLY_TASK_ID` (3) for the factual row of an example with no usable negative (none, or
negatives without `negative_labels`), so those rows are counted in the training metrics
(`objectives/counterfactual.py`) rather than dropped in silence. The factual row uses the first
rationale, the counterfactual rows the first `max_negatives` negatives (default 1, SCOTT's one
counterfactual per example); an example without a rationale gives no factual row.

Which target tokens carry loss is the scalar `targets_loss_start`: the index of the first
token with loss (0 on factual rows; on counterfactual rows the length of the longest common
prefix of the tokenized target and the tokenized `r' + " So the answer is"`, so the answer
tokens and the EOS after them carry loss, however the tokenizer joins the two). One integer per
example survives seqio's shuffling untouched; the `Counterfactual*Converter`s turn it into a
per-token mask before packing, so it packs like the targets (`decoder_loss_weights` is 0 on a
counterfactual row's rationale). The target is tokenized once more here for that prefix (a
cheap second encode of one string).
"""

from __future__ import annotations

import tensorflow as tf

from t5x_rationale.data.converters import MultiTaskDecoderConverter, MultiTaskEncDecConverter

FACTUAL_TASK_ID = 1
COUNTERFACTUAL_TASK_ID = 2
FACTUAL_ONLY_TASK_ID = 3
FACTUAL_MARKER = "[factual] "
COUNTERFACTUAL_MARKER = "[counterfactual] "
ANSWER_BRIDGE = " So the answer is"
AUTOTUNE = tf.data.AUTOTUNE


def _text_rows(ex, prompt_suffix: str, max_negatives: int) -> tf.data.Dataset:
    """The factual row (if the example has a rationale) and up to `max_negatives`
    counterfactual rows of one example, as strings; `targets_head` is the part without loss."""
    rationale = ex["rationales"][:1]
    n_f = tf.size(rationale)
    usable = tf.minimum(tf.size(ex["negatives"]), tf.size(ex["negative_labels"]))
    n_c = tf.minimum(usable, max_negatives)
    heads = tf.strings.join([ex["negatives"][:n_c], ANSWER_BRIDGE])
    factual_id = tf.where(n_c > 0, FACTUAL_TASK_ID, FACTUAL_ONLY_TASK_ID)
    factual_target = tf.strings.join([FACTUAL_MARKER, rationale, ANSWER_BRIDGE, " ", ex["label"]])
    return tf.data.Dataset.from_tensor_slices(
        {
            "id": tf.fill([n_f + n_c], ex["id"]),
            "inputs": tf.concat(
                [
                    tf.fill([n_f], tf.strings.join([FACTUAL_MARKER, ex["input"], prompt_suffix])),
                    tf.fill(
                        [n_c], tf.strings.join([COUNTERFACTUAL_MARKER, ex["input"], prompt_suffix])
                    ),
                ],
                0,
            ),
            "targets": tf.concat(
                [factual_target, tf.strings.join([heads, " ", ex["negative_labels"][:n_c]])], 0
            ),
            "targets_head": tf.concat([tf.fill([n_f], ""), heads], 0),
            "task_id": tf.concat(
                [tf.fill([n_f], factual_id), tf.fill([n_c], COUNTERFACTUAL_TASK_ID)], 0
            ),
        }
    )


def common_prefix_length(a: tf.Tensor, b: tf.Tensor) -> tf.Tensor:
    """The number of leading items two 1-D tensors share (int32 scalar)."""
    n = tf.minimum(tf.size(a), tf.size(b))
    same = tf.cast(tf.equal(a[:n], b[:n]), tf.int32)
    return tf.reduce_sum(tf.math.cumprod(same))


def preprocessor(vocabulary, *, prompt_suffix: str = "", max_negatives: int = 1):
    """seqio preprocessor (before tokenization): teacher rows -> factual and counterfactual
    rows with `task_id` and `targets_loss_start`. `max_negatives=0` gives the factual rows
    alone (the evaluation task)."""
    if max_negatives < 0:
        raise ValueError(f"max_negatives must be >= 0, got {max_negatives}")

    def loss_start(row):
        out = {k: v for k, v in row.items() if k != "targets_head"}
        tokens = tf.cast(vocabulary.encode_tf(row["targets"]), tf.int32)
        head = tf.cast(vocabulary.encode_tf(row["targets_head"]), tf.int32)
        out["targets_loss_start"] = common_prefix_length(tokens, head)
        return out

    def preprocess(ds: tf.data.Dataset) -> tf.data.Dataset:
        rows = ds.flat_map(lambda ex: _text_rows(ex, prompt_suffix, max_negatives))
        return rows.map(loss_start, num_parallel_calls=AUTOTUNE)

    return preprocess


class CounterfactualEncDecConverter(MultiTaskEncDecConverter):
    """`MultiTaskEncDecConverter` whose loss weights start at each example's
    `targets_loss_start` (a scalar feature): answer-only loss on counterfactual rows."""

    with_loss_start = True


class CounterfactualDecoderConverter(MultiTaskDecoderConverter):
    """`MultiTaskDecoderConverter` whose target loss weights start at each example's
    `targets_loss_start` (the prompt gets none, as usual)."""

    with_loss_start = True
