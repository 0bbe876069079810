"""QCRD's token layouts: the discriminator's (question, candidate) rows and the weights of
sampled negatives, with id 0 as a text token (byte-level BPE: "!") where the weights say so."""

import jax.numpy as jnp
import numpy as np

from t5x_rationale.architectures.discriminator import pair_rows
from t5x_rationale.qcrd.negatives import sample_weights


def test_pair_rows_continue_positions_after_the_question():
    tokens, segments, positions = pair_rows(
        jnp.asarray([[5, 6, 0]]), jnp.asarray([[[7, 8, 9, 0], [4, 0, 0, 0]]])
    )
    np.testing.assert_array_equal(tokens[0], [5, 6, 0, 7, 8, 9, 0])
    np.testing.assert_array_equal(segments[1], [1, 1, 0, 1, 0, 0, 0])
    np.testing.assert_array_equal(positions[0], [0, 1, 0, 2, 3, 4, 0])


def test_pair_rows_keep_id_zero_text_tokens_given_the_weights():
    """Id 0 as a text token: inside the question (which ends with its EOS, 1) and inside a
    candidate whose weights say so, it is valid and takes its position."""
    weights = jnp.asarray([[[1, 1, 1, 0], [1, 1, 0, 0]]], jnp.float32)
    tokens, segments, positions = pair_rows(
        jnp.asarray([[5, 0, 1, 0]]), jnp.asarray([[[7, 0, 1, 0], [0, 1, 0, 0]]]), weights
    )
    np.testing.assert_array_equal(tokens[0], [5, 0, 1, 0, 7, 0, 1, 0])
    np.testing.assert_array_equal(segments[0], [1, 1, 1, 0, 1, 1, 1, 0])
    np.testing.assert_array_equal(segments[1], [1, 1, 1, 0, 1, 1, 0, 0])
    np.testing.assert_array_equal(positions[0], [0, 1, 2, 0, 3, 4, 5, 0])
    np.testing.assert_array_equal(positions[1], [0, 1, 2, 0, 3, 4, 0, 0])


def test_sampled_negatives_weigh_their_tokens_up_to_the_first_eos():
    samples = np.array([[[4, 0, 1, 0, 0], [0, 0, 0, 0, 0], [6, 1, 7, 1, 0]]], np.int32)
    want = np.zeros(samples.shape, np.float32)
    for j, row in enumerate(samples[0]):
        ends = [i for i, t in enumerate(row) if t == 1]
        want[0, j, : (ends[0] + 1 if ends else len(row))] = 1.0  # no EOS: every token counts
    np.testing.assert_array_equal(sample_weights(samples, eos_id=1), want)
    np.testing.assert_array_equal(sample_weights(samples, eos_id=None), np.ones_like(want))
