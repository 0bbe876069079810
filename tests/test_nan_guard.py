"""The train step's NaN guard: non-finite steps are skipped, and a streak of them stops training."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from trainer_setup import BATCH, _assert_trees_equal, _global_norm, _partitioner, _Setup

from t5x_rationale.objectives import token_loss
from t5x_rationale.runtime.optimizers import OptimizerConfig, make_optimizer
from t5x_rationale.runtime.trainer import NonFiniteLossError, Trainer, host_metrics

NAN_LOSS, NAN_GRAD = 1, 2
NAN_LR = 1.0
NAN_CLIP = 1e-3  # far below the gradient norm: every applied update has norm lr * clip
NAN_TOTAL = 10


@pytest.fixture(scope="module")
def setup():
    return _Setup()


def _flagged_objective(model, params, batch, rng):
    """token_loss, made non-finite on request by batch['flag'] (1: NaN loss, 2: NaN gradient
    only)."""
    loss, metrics = token_loss(model, params, batch, rng)
    flag = batch["flag"][0]
    loss = loss * jnp.where(flag == NAN_LOSS, jnp.nan, 1.0)
    # Adds exactly 0 to the loss; d/ds sqrt((s - s0)^2 + c) at s = s0 is 0 / sqrt(c): 0 for c = 1,
    # nan for c = 0.
    scale = params["decoder"]["decoder_norm"]["scale"]
    offset = jnp.where(flag == NAN_GRAD, 0.0, 1.0)
    probe = jnp.sum(jnp.sqrt(jnp.square(scale - jax.lax.stop_gradient(scale)) + offset))
    loss = loss + (probe - jax.lax.stop_gradient(probe))
    return loss, dict(metrics, loss=loss)


@pytest.fixture(scope="module")
def nan_trainer(setup):
    config = OptimizerConfig(
        name="sgd",
        learning_rate=NAN_LR,
        schedule="linear",
        total_steps=NAN_TOTAL,
        clip_grad_norm=NAN_CLIP,
    )
    tx, schedule = make_optimizer(config)
    return Trainer(
        setup.model,
        _flagged_objective,
        tx,
        _partitioner(1, 1, 1),
        learning_rate_fn=schedule,
        max_bad_steps=3,
    )


def _flagged(setup, flag):
    return dict(setup.batch, flag=np.full((BATCH,), flag, np.int32))


def _update_norm(before, after):
    return _global_norm(
        jax.tree.map(
            lambda a, b: np.asarray(a, np.float64) - np.asarray(b, np.float64),
            after.params,
            before.params,
        )
    )


def test_nan_guard_skips_bad_steps_and_stops_after_streak(setup, nan_trainer):
    trainer = nan_trainer
    state = setup.fresh_state(trainer)
    # good, NaN loss, NaN grad, good, bad, bad, bad (-> stop, max_bad_steps=3)
    flags = [0, NAN_LOSS, NAN_GRAD, 0, NAN_LOSS, NAN_GRAD, NAN_LOSS]
    want_skipped = [0, 1, 2, 2, 3, 4, 5]
    want_streak = [0, 1, 2, 0, 1, 2, 3]
    good_updates = 0
    for i, flag in enumerate(flags):
        before = jax.device_get(state)
        state, metrics = trainer.train_step(
            state, trainer.partitioner.host_batch_to_global(_flagged(setup, flag))
        )
        after = jax.device_get(state)
        values = host_metrics(metrics)
        assert int(after.step) == i + 1
        assert int(after.skipped_steps) == want_skipped[i] == values["skipped_steps"]
        assert int(after.bad_streak) == want_streak[i] == values["bad_streak"]
        assert values["skipped"] == float(flag != 0)
        if flag:
            if flag == NAN_LOSS:
                assert math.isnan(values["loss"])
            else:
                assert math.isfinite(values["loss"])  # only the gradient is bad
                assert not math.isfinite(values["grad_norm"])
            _assert_trees_equal(after.params, before.params)
            _assert_trees_equal(after.opt_state, before.opt_state)
        else:
            assert math.isfinite(values["loss"]) and values["grad_norm"] > NAN_CLIP
            # The optimizer only counts applied updates: lr = schedule(number of good steps so far).
            lr = NAN_LR * (1 - good_updates / NAN_TOTAL)
            np.testing.assert_allclose(_update_norm(before, after), lr * NAN_CLIP, rtol=1e-4)
            good_updates += 1
            assert not np.array_equal(
                np.asarray(after.params["decoder"]["logits_dense"]["kernel"]),
                np.asarray(before.params["decoder"]["logits_dense"]["kernel"]),
            )
        np.testing.assert_array_equal(after.rng, before.rng)
        if want_streak[i] < 3:
            trainer.check_finite(values)
        else:
            with pytest.raises(NonFiniteLossError, match="3 consecutive"):
                trainer.check_finite(values)


def test_reported_learning_rate_is_the_applied_one_after_a_skipped_step(setup, nan_trainer):
    trainer = nan_trainer
    state = setup.fresh_state(trainer)
    state, _ = trainer.train_step(
        state, trainer.partitioner.host_batch_to_global(_flagged(setup, NAN_LOSS))
    )
    before = jax.device_get(state)
    state, metrics = trainer.train_step(
        state, trainer.partitioner.host_batch_to_global(_flagged(setup, 0))
    )
    values = host_metrics(metrics)
    applied = _update_norm(before, jax.device_get(state)) / NAN_CLIP
    np.testing.assert_allclose(values["learning_rate"], applied, rtol=1e-4)
