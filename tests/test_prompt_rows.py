"""Decoder-only prompt ++ continuation rows (QCRD's candidates, PINTO's choices) against a
plain-Python layout, with id 0 as a text token inside a prompt."""

import numpy as np

from t5x_rationale.objectives.prompt_rows import prompt_continuation_rows


def test_rows_hold_each_prompt_then_each_continuation_then_padding():
    prompts = np.array([[5, 0, 6, 1, 0, 0], [7, 1, 0, 0, 0, 0]], np.int32)  # 0 inside row 0
    lengths = [4, 2]  # up to the EOS (1)
    conts = np.array([[[8, 9, 1], [3, 1, 0]], [[0, 1, 0], [4, 4, 1]]], np.int32)
    weights = np.array([[[1, 1, 1], [1, 1, 0]], [[1, 1, 0], [1, 1, 1]]], np.float32)
    inputs, targets, row_weights = (
        np.asarray(x) for x in prompt_continuation_rows(prompts, conts, weights)
    )
    width = 6 + 3
    for b in range(2):
        for k in range(2):
            n = int(weights[b, k].sum())
            seq = list(prompts[b, : lengths[b]]) + list(conts[b, k, :n])
            want = np.array(seq + [0] * (width - len(seq)), np.int32)
            np.testing.assert_array_equal(targets[b, k], want)
            np.testing.assert_array_equal(inputs[b * 2 + k], np.concatenate([[0], want[:-1]]))
            w = [0.0] * lengths[b] + [1.0] * n
            np.testing.assert_array_equal(row_weights[b, k], w + [0.0] * (width - len(w)))
