"""Distilling step-by-step loss against a token-by-token reference."""

import jax.numpy as jnp
import numpy as np
import pytest
from random_params import random_params

from t5x_rationale.architectures import build_model, get_preset
from t5x_rationale.objectives import step_by_step_loss, token_loss


def _batch(rng):
    """4 rows: 2 short label rows (3 tokens) and 2 long rationale rows (20 tokens), length 24."""
    b, t, s = 4, 24, 10
    lengths, task = np.array([3, 20, 3, 20]), np.array([1, 2, 1, 2])
    targets = rng.integers(3, 256, (b, t)).astype(np.int32)
    mask = np.arange(t)[None] < lengths[:, None]
    targets = targets * mask
    return {
        "encoder_input_tokens": rng.integers(3, 256, (b, s)).astype(np.int32),
        "decoder_target_tokens": targets,
        "decoder_input_tokens": np.pad(targets[:, :-1], ((0, 0), (1, 0))),
        "decoder_loss_weights": mask.astype(np.float32),
        "decoder_task_ids": (task[:, None] * mask).astype(np.int32),
    }


def _reference(logits, batch, alpha, z_loss):
    """Per-task means written out token by token with a float64 log-softmax."""
    logits = np.asarray(logits, np.float64)
    sums, counts = {1: 0.0, 2: 0.0}, {1: 0, 2: 0}
    for r in range(logits.shape[0]):
        for i in range(logits.shape[1]):
            if batch["decoder_loss_weights"][r, i] == 0:
                continue
            row = logits[r, i]
            log_z = np.log(np.sum(np.exp(row - row.max()))) + row.max()
            ce = log_z - row[batch["decoder_target_tokens"][r, i]] + z_loss * log_z**2
            task = int(batch["decoder_task_ids"][r, i])
            sums[task] += ce
            counts[task] += 1
    return alpha * sums[1] / counts[1] + (1 - alpha) * sums[2] / counts[2], sums, counts


@pytest.mark.parametrize("alpha", [0.5, 0.2, 1.0])
def test_per_task_normalisation_matches_reference(alpha):
    batch = _batch(np.random.default_rng(0))
    model = build_model(get_preset("t5-tiny"))
    params = random_params(
        model,
        encoder_input_tokens=batch["encoder_input_tokens"],
        decoder_input_tokens=batch["decoder_input_tokens"],
    )
    loss, metrics = step_by_step_loss(model, params, batch, None, alpha=alpha, z_loss=1e-4)
    logits = model.apply(
        {"params": params}, batch["encoder_input_tokens"], batch["decoder_input_tokens"]
    )
    expected, sums, counts = _reference(logits, batch, alpha, 1e-4)
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
    np.testing.assert_allclose(float(metrics["label_loss"]), sums[1] / counts[1], rtol=1e-5)
    np.testing.assert_allclose(float(metrics["rationale_loss"]), sums[2] / counts[2], rtol=1e-5)
    assert float(metrics["denominator"]) == counts[1] + counts[2] == 46
    # The pooled token mean weights the long rationales 40:6; the per-task mean does not.
    pooled = (sums[1] + sums[2]) / (counts[1] + counts[2])
    if alpha == 0.5:
        assert abs(expected - pooled) > 1e-3
        np.testing.assert_allclose(
            float(token_loss(model, params, batch, None, z_loss=1e-4)[0]), pooled, rtol=1e-5
        )


def test_missing_task_ids_is_a_clear_error():
    batch = _batch(np.random.default_rng(1))
    batch.pop("decoder_task_ids")
    model = build_model(get_preset("t5-tiny"))
    with pytest.raises(KeyError, match="decoder_task_ids"):
        step_by_step_loss(model, {}, batch, None)


def test_a_task_absent_from_the_batch_contributes_zero():
    batch = _batch(np.random.default_rng(2))
    batch["decoder_task_ids"] = jnp.where(
        batch["decoder_task_ids"] == 2, 1, batch["decoder_task_ids"]
    )
    model = build_model(get_preset("t5-tiny"))
    params = random_params(
        model,
        encoder_input_tokens=batch["encoder_input_tokens"],
        decoder_input_tokens=batch["decoder_input_tokens"],
    )
    loss, metrics = step_by_step_loss(model, params, batch, None, alpha=0.5)
    assert float(metrics["rationale_loss"]) == 0.0
    np.testing.assert_allclose(float(loss), 0.5 * float(metrics["label_loss"]), rtol=1e-6)
