"""PINTO's data: the corpus's multiple-choice variant, its seqio task and `ChoicesConverter`."""

import numpy as np
import pytest
import seqio
import tensorflow as tf

from t5x_rationale.data import synthetic
from t5x_rationale.data.choice_converter import ChoicesConverter
from t5x_rationale.data.choice_tasks import register_synthetic_choices
from t5x_rationale.data.synthetic.choices import near_misses, with_choices
from t5x_rationale.data.synthetic.sampling import Draw
from t5x_rationale.data.vocab import get_vocabulary

LENGTHS = {"inputs": 96, "rationale": 160, "choices": 8}
SIZES = {"train": 12, "validation": 4, "test": 4}


@pytest.mark.parametrize("split", ["train", "test"])
def test_rows_have_four_distinct_choices_with_the_label_among_them(split):
    rows = synthetic.generate_split(split, num_examples=200, seed=3)
    mc = with_choices(rows, seed=3, split=split)
    assert mc == with_choices(rows, seed=3, split=split)  # deterministic
    positions = []
    for row, original in zip(mc, rows):
        choices = row["choices"]
        assert len(choices) == 4 and len(set(choices)) == 4, choices
        assert row["label"] in choices
        assert all(c.isdigit() for c in choices)
        assert {k: v for k, v in row.items() if k != "choices"} == original
        positions.append(choices.index(row["label"]))
    # the answer's slot carries no information
    assert np.bincount(positions, minlength=4).min() > 200 / 4 * 0.6
    # the negatives' wrong answers come first among the near misses
    with_negatives = [r for r in mc if r["negative_labels"]]
    assert all(
        set(r["negative_labels"]) - {r["label"]} <= set(r["choices"]) for r in with_negatives
    )


def test_near_misses_are_distinct_and_wrong():
    draw = Draw([0])
    for answer in ("0", "1", "7", "42", "1000"):
        misses = near_misses(answer, [answer, "5", "5"], draw, 3)
        assert len(set(misses)) == 3 and answer not in misses
    with pytest.raises(ValueError, match="near misses"):
        near_misses("yes", ["no"], draw, 3)


@pytest.fixture(scope="module")
def batch_and_rows():
    name = "pinto_test_corpus"
    task = register_synthetic_choices(name, sizes=SIZES, seed=5, difficulty=1, overwrite=True)
    ds = seqio.get_mixture_or_task(task).get_dataset(
        sequence_length=LENGTHS,
        split="validation",
        shuffle=False,
        use_cached=False,
        trim_output_features=False,
    )
    converted = ChoicesConverter(num_choices=4)(ds, LENGTHS).batch(4)
    batch = next(converted.as_numpy_iterator())
    rows = with_choices(
        synthetic.generate_split("validation", num_examples=4, seed=5, difficulty=1),
        seed=5,
        split="validation",
    )
    return batch, rows


def test_a_converted_batch_has_the_shapes_and_masks(batch_and_rows):
    batch, rows = batch_and_rows
    n_enc = LENGTHS["inputs"] + LENGTHS["rationale"]
    shapes = {
        "encoder_input_tokens": (4, n_enc),
        "rationale_mask": (4, n_enc),
        "choice_input_tokens": (4, 4, 8),
        "choice_target_tokens": (4, 4, 8),
        "choice_loss_weights": (4, 4, 8),
        "choice_mask": (4, 4),
        "choice_label": (4,),
        "decoder_input_tokens": (4, 8),
        "decoder_target_tokens": (4, 8),
        "decoder_loss_weights": (4, 8),
        "decoder_truncated": (4, 8),
    }
    assert {k: v.shape for k, v in batch.items()} == shapes
    np.testing.assert_array_equal(batch["choice_mask"], 1)
    np.testing.assert_array_equal(batch["decoder_truncated"], 0)
    targets = batch["choice_target_tokens"]
    np.testing.assert_array_equal(batch["choice_loss_weights"], targets > 0)
    np.testing.assert_array_equal(batch["choice_input_tokens"][..., 1:], targets[..., :-1])
    np.testing.assert_array_equal(batch["choice_input_tokens"][..., 0], 0)
    label_rows = targets[np.arange(4), batch["choice_label"]]
    np.testing.assert_array_equal(batch["decoder_target_tokens"], label_rows)


def test_the_batch_holds_the_rows_text(batch_and_rows):
    batch, rows = batch_and_rows
    vocab = get_vocabulary()
    for b, row in enumerate(rows):
        enc, rmask = batch["encoder_input_tokens"][b], batch["rationale_mask"][b]
        real = enc[enc > 0]
        assert real[-1] == 1  # EOS ends the encoder input
        rationale = enc[rmask > 0]
        assert vocab.decode(rationale.tolist()) == row["rationales"][0]
        start = np.flatnonzero(rmask)[0]
        assert np.all(rmask[start : start + len(rationale)] == 1)  # one contiguous span
        prefix = vocab.decode(enc[:start].tolist())
        assert prefix.startswith(row["input"]) and prefix.endswith("Rationale:")
        for c, choice in enumerate(row["choices"]):
            target = batch["choice_target_tokens"][b, c]
            assert target[target > 0][-1] == 1
            assert vocab.decode(target[target > 1].tolist()) == choice
            assert f"({'abcd'[c]}) {choice}" in prefix
        assert row["choices"][batch["choice_label"][b]] == row["label"]


def test_converter_refuses_packing_and_a_task_without_labels():
    with pytest.raises(ValueError, match="does not pack"):
        ChoicesConverter(pack=True)
    task = register_synthetic_choices("pinto_test_corpus", sizes=SIZES, seed=5, overwrite=True)
    ds = seqio.get_mixture_or_task(task).get_dataset(
        sequence_length=LENGTHS, split="test", shuffle=False, use_cached=False
    )
    unlabelled = ds.map(lambda ex: {k: v for k, v in ex.items() if k != "choice_label"})
    with pytest.raises(ValueError, match="choice_label"):
        ChoicesConverter()(unlabelled, LENGTHS)


def test_choice_weights_cover_every_choice_token_even_id_zero():
    """Id 0 as a text token (byte-level BPE: "!") in a choice still gets its weight; only the
    padding after each choice and the padded slot get none."""
    choices = tf.ragged.constant([[[7, 0, 1], [0, 1], [5, 6, 0, 1]]], dtype=tf.int32)
    ds = tf.data.Dataset.from_tensor_slices(
        {
            "inputs": tf.constant([[3, 4]], tf.int32),
            "rationale": tf.constant([[0, 9]], tf.int32),
            "choices": choices,
            "choice_label": tf.constant([1], tf.int32),
        }
    )
    lengths = {"inputs": 4, "rationale": 4, "choices": 5}
    row = next(ChoicesConverter(num_choices=4)(ds, lengths).as_numpy_iterator())
    lens = [3, 2, 4, 0]
    want = np.array([[1.0] * n + [0.0] * (5 - n) for n in lens], np.float32)
    np.testing.assert_array_equal(row["choice_loss_weights"], want)
    np.testing.assert_array_equal(row["choice_mask"], [1, 1, 1, 0])
    np.testing.assert_array_equal(row["decoder_loss_weights"], want[1])
    np.testing.assert_array_equal(row["encoder_input_tokens"], [3, 4, 0, 9, 1, 0, 0, 0])
    np.testing.assert_array_equal(row["rationale_mask"], [0, 0, 1, 1, 0, 0, 0, 0])
