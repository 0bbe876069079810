"""Sharded train steps on 8 simulated devices equal the same steps on one device."""

import jax
import numpy as np
import pytest

from t5x_rationale.architectures import build_model, get_preset
from t5x_rationale.benchmarks.random_batches import RandomBatches
from t5x_rationale.objectives import token_loss
from t5x_rationale.runtime.optimizers import OptimizerConfig, make_optimizer
from t5x_rationale.runtime.partitioning import MeshConfig, Partitioner, create_mesh
from t5x_rationale.runtime.trainer import Trainer

MESHES = ["8x1x1", "1x8x1", "2x2x2", "1x1x8"]


def _run(preset, mesh, devices, optimizer, steps=3, num_microbatches=1):
    config = get_preset(preset)
    tx, schedule = make_optimizer(OptimizerConfig(name=optimizer, learning_rate=0.05))
    partitioner = Partitioner(create_mesh(MeshConfig.parse(mesh), devices))
    trainer = Trainer(
        build_model(config),
        token_loss,
        tx,
        partitioner,
        learning_rate_fn=schedule,
        num_microbatches=num_microbatches,
    )
    shapes = dict(
        vocab_size=config.vocab_size,
        batch_size=16,
        target_length=16,
        input_length=24 if config.architecture == "encoder_decoder" else 0,
    )
    data = RandomBatches(**shapes, seed=3)
    state = trainer.init_state(0, next(RandomBatches(**shapes, seed=99)))
    losses = []
    for _ in range(steps):
        state, metrics = trainer.train_step(state, partitioner.host_batch_to_global(next(data)))
        losses.append(float(metrics["loss"]))
    return np.array(losses), jax.device_get(state.params), trainer


@pytest.fixture(scope="module", params=["t5-tiny", "decoder-tiny"])
def reference(request):
    preset = request.param
    return preset, _run(preset, "1x1x1", jax.devices()[:1], "sgd")


def _assert_same_params(got, want, atol):
    paths = jax.tree_util.tree_flatten_with_path(want)[0]
    for (path, w), g in zip(paths, jax.tree.leaves(got)):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=atol, err_msg=jax.tree_util.keystr(path))


@pytest.mark.parametrize("mesh", MESHES)
def test_sharded_sgd_steps_match_one_device(reference, mesh):
    """SGD updates are linear in the gradient, so params compare the gradients themselves."""
    preset, (ref_losses, ref_params, _) = reference
    losses, params, trainer = _run(preset, mesh, None, "sgd")
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5, atol=0)
    _assert_same_params(params, ref_params, atol=1e-6)
    # The run really was sharded: parameters are split over devices unless data-parallel.
    shardings = jax.tree.leaves(trainer.layout(None)[2].params)
    assert all(len(s.device_set) == 8 for s in shardings)
    assert any(not s.is_fully_replicated for s in shardings) == (mesh != "8x1x1")


def test_sharded_microbatched_steps_match_one_device(reference):
    preset, (ref_losses, ref_params, _) = reference
    losses, params, _ = _run(preset, "2x2x2", None, "sgd", num_microbatches=2)
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5, atol=0)
    _assert_same_params(params, ref_params, atol=1e-6)


@pytest.mark.parametrize("preset", ["t5-tiny", "decoder-tiny"])
def test_sharded_adamw_losses_match_one_device(preset):
    """AdamW divides by sqrt(v): float-rounding-level gradient noise on near-zero gradients
    becomes an O(lr) update, so params are compared through the SGD tests; losses still
    must agree step by step."""
    ref_losses, _, _ = _run(preset, "1x1x1", jax.devices()[:1], "adamw")
    losses, _, _ = _run(preset, "2x2x2", None, "adamw")
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5, atol=0)
