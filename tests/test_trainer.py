"""The sharded train step against hand-written references; microbatches, throughput, init."""

from __future__ import annotations

import math
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec
from trainer_setup import (
    CLIP,
    LR,
    _assert_trees_close,
    _assert_trees_equal,
    _global_norm,
    _partitioner,
    _Setup,
)

from t5x_rationale.objectives import token_loss
from t5x_rationale.runtime import trainer as trainer_lib
from t5x_rationale.runtime.optimizers import make_optimizer
from t5x_rationale.runtime.trainer import Throughput, Trainer


@pytest.fixture(scope="module")
def setup():
    return _Setup()


# =========================================================== (a) one step vs reference


@pytest.fixture(scope="module")
def reference_step(setup):
    """params - lr * clip(grad), with the gradient from jax.grad of the objective outside the
    trainer."""
    params = setup.host_state.params
    rng = jax.random.fold_in(jnp.asarray(setup.host_state.rng), 0)  # the trainer's rng for step 0
    batch = setup.batch

    @jax.jit
    def reference(p):
        (loss, metrics), grads = jax.value_and_grad(
            lambda q: token_loss(setup.model, q, batch, rng), has_aux=True
        )(p)
        logits = setup.model.apply({"params": p}, batch["decoder_input_tokens"], deterministic=True)
        per_token = (
            jax.nn.logsumexp(logits, -1)
            - jnp.take_along_axis(logits, batch["decoder_target_tokens"][..., None], -1)[..., 0]
        )
        # token_loss's default z_loss
        per_token = per_token + 1e-4 * jax.nn.logsumexp(logits, -1) ** 2
        return loss, metrics, grads, per_token

    loss, metrics, grads, per_token = jax.device_get(reference(params))
    norm = _global_norm(grads)
    factor = min(1.0, CLIP / norm)
    new_params = jax.tree.map(
        lambda p, g: np.asarray(p, np.float64) - LR * factor * np.asarray(g, np.float64),
        params,
        grads,
    )
    return dict(
        params=new_params,
        grad_norm=norm,
        loss=float(loss),
        per_token=np.asarray(per_token, np.float64),
        metrics={k: float(v) for k, v in metrics.items()},
    )


def test_train_step_matches_reference(setup, reference_step):
    assert reference_step["grad_norm"] > CLIP  # the clipping branch is exercised
    new_state, metrics = setup.step(setup.trainer())
    _assert_trees_close(new_state.params, reference_step["params"], rtol=1e-5, atol=1e-6)
    # The update is far larger than the tolerance (the comparison is not vacuous).
    moved = _global_norm(
        jax.tree.map(
            lambda a, b: np.asarray(a, np.float64) - b, new_state.params, setup.host_state.params
        )
    )
    np.testing.assert_allclose(moved, LR * CLIP, rtol=1e-5)
    assert int(new_state.step) == 1
    assert int(new_state.skipped_steps) == 0 and int(new_state.bad_streak) == 0
    np.testing.assert_array_equal(new_state.rng, setup.host_state.rng)  # the base key never changes
    np.testing.assert_allclose(metrics["loss"], reference_step["loss"], rtol=1e-6)
    np.testing.assert_allclose(metrics["grad_norm"], reference_step["grad_norm"], rtol=1e-5)


def test_train_step_metrics(setup, reference_step):
    _, metrics = setup.step(setup.trainer())
    for key in (
        "loss",
        "accuracy",
        "z_loss",
        "denominator",
        "grad_norm",
        "learning_rate",
        "skipped",
        "skipped_steps",
        "bad_streak",
    ):
        assert key in metrics, key
        assert math.isfinite(metrics[key])
    for key in ("accuracy", "z_loss"):
        np.testing.assert_allclose(
            metrics[key], reference_step["metrics"][key], rtol=1e-5, atol=1e-9
        )
    assert metrics["denominator"] == float(setup.batch["decoder_loss_weights"].sum())
    assert metrics["learning_rate"] == pytest.approx(LR, rel=1e-7)
    assert metrics["skipped"] == 0.0


# ================================================== (b) gradient accumulation (microbatches)


def test_random_batches_are_ragged_across_microbatches(setup, reference_step):
    """Guards the premise of the accumulation tests: microbatches carry different token counts,
    so averaging microbatch means without weights would give a different loss."""
    weights = setup.batch["decoder_loss_weights"].astype(np.float64)
    per_token = reference_step["per_token"]
    np.testing.assert_allclose(
        (per_token * weights).sum() / weights.sum(), reference_step["loss"], rtol=1e-6
    )
    for n in (2, 4):
        counts = [weights[i::n].sum() for i in range(n)]
        assert len(set(counts)) > 1, counts
        means = [(per_token[i::n] * weights[i::n]).sum() / weights[i::n].sum() for i in range(n)]
        weighted = sum(m * c for m, c in zip(means, counts)) / weights.sum()
        np.testing.assert_allclose(weighted, reference_step["loss"], rtol=1e-6)
        assert abs(np.mean(means) - weighted) > 1e-4


@pytest.mark.parametrize(
    "mesh,num_microbatches",
    [((1, 1, 1), 2), ((1, 1, 1), 4), ((2, 2, 2), 2)],
    ids=["1dev-2mb", "1dev-4mb", "2x2x2-2mb"],
)
def test_microbatches_match_single_batch(setup, mesh, num_microbatches):
    base_state, base_metrics = setup.step(setup.trainer())
    state, metrics = setup.step(setup.trainer(mesh, num_microbatches))
    _assert_trees_close(state.params, base_state.params, rtol=1e-5, atol=2e-7)
    for key in ("loss", "accuracy", "z_loss", "grad_norm"):
        np.testing.assert_allclose(
            metrics[key], base_metrics[key], rtol=2e-6, atol=1e-9, err_msg=key
        )
    assert metrics["denominator"] == base_metrics["denominator"]
    assert int(state.step) == 1


def test_microbatches_must_divide_batch(setup):
    with pytest.raises(ValueError, match="num_microbatches"):
        Trainer(
            setup.model,
            token_loss,
            make_optimizer(setup.opt_config)[0],
            _partitioner(1, 1, 1),
            num_microbatches=0,
        )
    tx, _ = make_optimizer(setup.opt_config)
    trainer = Trainer(setup.model, token_loss, tx, _partitioner(1, 1, 1), num_microbatches=3)
    with pytest.raises(ValueError, match="divisible by num_microbatches"):
        trainer.train_step(
            setup.fresh_state(trainer), trainer.partitioner.host_batch_to_global(setup.batch)
        )
    # 12 rows: divisible by 2 microbatches and by the 4 batch shards, but not by 2 x 4.
    tx, _ = make_optimizer(setup.opt_config)
    trainer = Trainer(setup.model, token_loss, tx, _partitioner(2, 2, 2), num_microbatches=2)
    batch = {k: v[:12] for k, v in setup.batch.items()}
    with pytest.raises(ValueError, match="divisible by num_microbatches"):
        trainer.train_step(
            setup.fresh_state(trainer), trainer.partitioner.host_batch_to_global(batch)
        )


# ================================================================== (d) throughput


class _FakeClock:
    def __init__(self):
        self.now = 1000.0

    def perf_counter(self):
        return self.now


def test_throughput(monkeypatch):
    clock = _FakeClock()
    monkeypatch.setattr(trainer_lib, "time", types.SimpleNamespace(perf_counter=clock.perf_counter))
    meter = Throughput(tokens_per_step=4096, flops_per_step=3e12, peak_flops=1.2e13)
    assert meter.update() == {}  # the first call only starts the clock
    clock.now += 0.5
    out = meter.update()
    assert out["step_time_s"] == pytest.approx(0.5)
    assert out["tokens_per_s"] == pytest.approx(8192.0)
    assert out["model_tflops_per_s"] == pytest.approx(6.0)
    assert out["mfu"] == pytest.approx(0.5)  # 3e12 / 0.5 / 1.2e13
    meter.start()
    clock.now += 2.0
    out = meter.update()
    assert out["step_time_s"] == pytest.approx(2.0)
    assert out["tokens_per_s"] == pytest.approx(2048.0)
    assert out["mfu"] == pytest.approx(out["model_tflops_per_s"] * 1e12 / 1.2e13)
    no_peak = Throughput(tokens_per_step=10, flops_per_step=1e9)
    no_peak.start()
    clock.now += 1.0
    assert "mfu" not in no_peak.update()


# ================================================================== (e) init_state


def test_init_state_identical_across_meshes(setup):
    single = setup.host_state
    trainer8 = setup.trainer((2, 2, 2), 2)
    state8 = trainer8.init_state(0, setup.batch)
    # The 8-device state really is sharded (the comparison is not between two replicated copies).
    kernel = state8.params["decoder"]["layers_0"]["mlp"]["wi_0"]["kernel"]
    assert isinstance(kernel.sharding, NamedSharding)
    assert kernel.sharding.spec == PartitionSpec("fsdp", "tensor")
    assert len({s.device for s in kernel.addressable_shards}) == 8
    assert kernel.addressable_shards[0].data.shape == (32, 64)
    _assert_trees_equal(jax.device_get(state8), single)
    assert int(single.step) == 0 and int(single.skipped_steps) == 0 and int(single.bad_streak) == 0
