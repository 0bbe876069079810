"""Feature converters against plain-Python references: packing, shifts, weights, counts."""

import numpy as np
import pytest
import tensorflow as tf

from t5x_rationale.data import converters, qcrd_converter

EXAMPLES = [
    {"inputs": [5, 6, 7, 1], "targets": [8, 9, 1], "task_id": 1},
    {"inputs": [10, 11, 1], "targets": [12, 13, 14, 15, 16, 1], "task_id": 2},  # targets cut at 5
    {"inputs": [17, 1], "targets": [18, 1], "task_id": 1},
    {
        "inputs": [19, 20, 21, 22, 23, 24, 25, 1],
        "targets": [26, 1],
        "task_id": 2,
    },  # inputs cut at 6
]
LENGTHS = {"inputs": 6, "targets": 5}
# The same with id 0 as a text token (byte-level BPE: "!"), first, inside and last.
ZERO = {6: 0, 19: 0, 12: 0, 14: 0, 26: 0, 18: 0, 1: 0}
WITH_ZERO_IDS = [
    {
        **ex,
        "inputs": [ZERO.get(t, t) for t in ex["inputs"]],
        "targets": [ZERO.get(t, t) for t in ex["targets"]],
    }
    for ex in EXAMPLES
]
BOTH = pytest.mark.parametrize("examples", [EXAMPLES, WITH_ZERO_IDS], ids=["ids>0", "id0"])


def _dataset(examples):
    def gen():
        for ex in examples:
            yield {
                "inputs": np.array(ex["inputs"], np.int32),
                "targets": np.array(ex["targets"], np.int32),
                "task_id": np.int32(ex["task_id"]),
            }

    return tf.data.Dataset.from_generator(
        gen,
        output_signature={
            "inputs": tf.TensorSpec([None], tf.int32),
            "targets": tf.TensorSpec([None], tf.int32),
            "task_id": tf.TensorSpec([], tf.int32),
        },
    )


def _rows(converter, examples=EXAMPLES, lengths=LENGTHS):
    return list(converter(_dataset(examples), lengths).as_numpy_iterator())


def _pad(seq, n):
    return np.array(list(seq[:n]) + [0] * (n - len(seq[:n])), np.int32)


@BOTH
def test_encdec_unpacked_matches_reference(examples):
    rows = _rows(converters.MultiTaskEncDecConverter(pack=False), examples)
    assert len(rows) == len(examples)
    for row, ex in zip(rows, examples):
        targets = ex["targets"][:5]
        np.testing.assert_array_equal(row["encoder_input_tokens"], _pad(ex["inputs"], 6))
        np.testing.assert_array_equal(row["decoder_target_tokens"], _pad(targets, 5))
        np.testing.assert_array_equal(row["decoder_input_tokens"], _pad([0] + targets[:-1], 5))
        np.testing.assert_array_equal(row["decoder_loss_weights"], _pad([1] * len(targets), 5))
        np.testing.assert_array_equal(
            row["decoder_task_ids"], _pad([ex["task_id"]] * len(targets), 5)
        )
        cut = len(ex["inputs"]) > 6 or len(ex["targets"]) > 5
        assert row["decoder_truncated"].sum() == cut and row["decoder_truncated"][0] == cut


@BOTH
def test_encdec_packing_matches_reference(examples):
    lengths = {"inputs": 12, "targets": 10}
    rows = _rows(converters.MultiTaskEncDecConverter(pack=True), examples, lengths)
    # Reference: concatenate every row's segments back and compare with the examples, in order.
    seen = []
    for row in rows:
        for seg in range(1, row["decoder_segment_ids"].max() + 1):
            t_mask, i_mask = row["decoder_segment_ids"] == seg, row["encoder_segment_ids"] == seg
            targets = row["decoder_target_tokens"][t_mask]
            assert list(row["decoder_positions"][t_mask]) == list(range(len(targets)))
            assert list(row["encoder_positions"][i_mask]) == list(range(i_mask.sum()))
            assert list(row["decoder_input_tokens"][t_mask]) == [0] + list(targets[:-1])
            assert row["decoder_loss_weights"][t_mask].all()
            assert set(row["decoder_task_ids"][t_mask]) <= {1, 2}
            seen.append(
                (
                    list(row["encoder_input_tokens"][i_mask]),
                    list(targets),
                    int(row["decoder_task_ids"][t_mask][0]),
                )
            )
        pad = row["decoder_segment_ids"] == 0
        assert (
            not row["decoder_target_tokens"][pad].any()
            and not row["decoder_loss_weights"][pad].any()
        )
    expected = [(ex["inputs"], ex["targets"], ex["task_id"]) for ex in examples]
    assert sorted(seen) == sorted(expected)
    assert len(rows) < len(EXAMPLES)  # something was packed together
    assert sum(int(r["decoder_truncated"].sum()) for r in rows) == 0


def test_truncation_is_counted():
    rows = _rows(converters.EncDecConverter(pack=True))
    assert sum(int(r["decoder_truncated"].sum()) for r in rows) == 2


@BOTH
def test_decoder_prefix_lm_reference(examples):
    converter = converters.MultiTaskDecoderConverter(pack=False, bidirectional_prefix=True)
    rows = _rows(converter, examples)
    assert len(rows) == len(examples)
    for row, ex in zip(rows, examples):
        prompt, targets = ex["inputs"][:6], ex["targets"][:5]
        seq = prompt + targets
        np.testing.assert_array_equal(row["decoder_target_tokens"], _pad(seq, 11))
        np.testing.assert_array_equal(row["decoder_input_tokens"], _pad([0] + seq[:-1], 11))
        np.testing.assert_array_equal(
            row["decoder_loss_weights"], _pad([0] * len(prompt) + [1] * len(targets), 11)
        )
        # Shifted inputs: BOS and every prompt token are bidirectional prefix.
        np.testing.assert_array_equal(
            row["decoder_causal_attention"],
            _pad([1] * (len(prompt) + 1) + [0] * (len(targets) - 1), 11),
        )
        np.testing.assert_array_equal(row["decoder_task_ids"], _pad([ex["task_id"]] * len(seq), 11))


@BOTH
def test_decoder_plain_lm_packed_loss_everywhere(examples):
    ds = tf.data.Dataset.from_generator(
        lambda: ({"targets": np.array(ex["targets"], np.int32)} for ex in examples),
        output_signature={"targets": tf.TensorSpec([None], tf.int32)},
    )
    conv = converters.DecoderConverter(pack=True, inputs=False, loss_on_targets_only=False)
    rows = list(conv(ds, {"targets": 8}).as_numpy_iterator())
    got = []
    for row in rows:
        for seg in range(1, row["decoder_segment_ids"].max() + 1):
            m = row["decoder_segment_ids"] == seg
            got.append(list(row["decoder_target_tokens"][m]))
            assert row["decoder_loss_weights"][m].all()
            assert list(row["decoder_input_tokens"][m]) == [0] + got[-1][:-1]
        pad = row["decoder_segment_ids"] == 0
        assert not row["decoder_loss_weights"][pad].any()
    assert sorted(got) == sorted([ex["targets"][:8] for ex in examples])


def test_multitask_converter_needs_task_id():
    ds = _dataset(EXAMPLES).map(lambda ex: {"inputs": ex["inputs"], "targets": ex["targets"]})
    with pytest.raises(ValueError, match="task_id"):
        converters.MultiTaskEncDecConverter(pack=False)(ds, LENGTHS)


def test_candidates_converter_reference():
    def gen():
        yield {
            "inputs": np.array([3, 4, 1], np.int32),
            "positives": tf.ragged.constant([[5, 6, 1], [7, 1]], tf.int32),
            "negatives": tf.ragged.constant([[8, 9, 10, 11, 1]], tf.int32),
        }

    ds = tf.data.Dataset.from_generator(
        gen,
        output_signature={
            "inputs": tf.TensorSpec([None], tf.int32),
            "positives": tf.RaggedTensorSpec([None, None], tf.int32),
            "negatives": tf.RaggedTensorSpec([None, None], tf.int32),
        },
    )
    conv = qcrd_converter.CandidatesConverter(num_positives=3, num_negatives=2)
    (row,) = list(conv(ds, {"inputs": 4, "positives": 4, "negatives": 4}).as_numpy_iterator())
    expected = np.array([[5, 6, 1, 0], [7, 1, 0, 0], [0] * 4, [8, 9, 10, 11], [0] * 4])
    np.testing.assert_array_equal(row["candidate_target_tokens"], expected)
    np.testing.assert_array_equal(
        row["candidate_input_tokens"], np.pad(expected[:, :-1], ((0, 0), (1, 0)))
    )
    np.testing.assert_array_equal(row["candidate_mask"], [1, 1, 0, 1, 0])
    np.testing.assert_array_equal(row["candidate_is_positive"], [1, 1, 1, 0, 0])
    np.testing.assert_array_equal(row["candidate_loss_weights"], (expected > 0).astype(np.float32))
    np.testing.assert_array_equal(row["encoder_input_tokens"], [3, 4, 1, 0])
    assert row["candidate_truncated"].sum() == 1  # the negative lost its EOS


def test_candidate_weights_cover_id_zero_tokens():
    """Id 0 as a text token inside a candidate still gets its weight."""
    ds = tf.data.Dataset.from_tensor_slices(
        {
            "inputs": tf.constant([[3, 0, 1]], tf.int32),
            "positives": tf.ragged.constant([[[0, 6, 1], [0, 1]]], tf.int32),
            "negatives": tf.ragged.constant([[[8, 0, 0, 1]]], tf.int32),
        }
    )
    conv = qcrd_converter.CandidatesConverter(num_positives=2, num_negatives=2)
    (row,) = list(conv(ds, {"inputs": 4, "positives": 5, "negatives": 5}).as_numpy_iterator())
    lengths = [3, 2, 4, 0]
    want = np.array([[1.0] * n + [0.0] * (5 - n) for n in lengths], np.float32)
    np.testing.assert_array_equal(row["candidate_loss_weights"], want)
    np.testing.assert_array_equal(row["candidate_target_tokens"][2], [8, 0, 0, 1, 0])


def test_candidates_converter_refuses_packing():
    with pytest.raises(ValueError, match="does not pack"):
        qcrd_converter.CandidatesConverter(pack=True)
