"""`train.init_from`: a new run starts from another run's params (fresh optimizer, step 0),
including a Quiet-STaR model from a plain decoder LM's checkpoint."""

import jax
import numpy as np
import pytest
from checkpoint_setup import EXAMPLE, assert_bitwise_equal, assert_not_equal
from quiet_star_models import tiny_config

from t5x_rationale.architectures import build_model, get_preset
from t5x_rationale.architectures.quiet_star_lm import thought_init
from t5x_rationale.objectives import token_loss
from t5x_rationale.runtime.checkpoints import Checkpointer, CheckpointMismatchError
from t5x_rationale.runtime.optimizers import OptimizerConfig, make_optimizer
from t5x_rationale.runtime.partitioning import MeshConfig, Partitioner, create_mesh
from t5x_rationale.runtime.trainer import Trainer
from t5x_rationale.runtime.warm_start import warm_start

DECODER = dict(vocab_size=256)


def _trainer(config, mesh=MeshConfig(2, 2, 2)) -> Trainer:
    tx, _ = make_optimizer(OptimizerConfig(name="adamw", learning_rate=1e-2))
    devices = jax.devices()[: mesh.data * mesh.fsdp * mesh.tensor]
    return Trainer(build_model(config), token_loss, tx, Partitioner(create_mesh(mesh, devices)))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A decoder-tiny state after one step (params away from init), saved at step 1."""
    trainer = _trainer(get_preset("decoder-tiny", **DECODER))
    state, _ = trainer.train_step(trainer.init_state(0, EXAMPLE), EXAMPLE)
    directory = tmp_path_factory.mktemp("run") / "checkpoints"
    checkpointer = Checkpointer(str(directory), save_every=1)
    checkpointer.save(1, state)
    checkpointer.wait()
    checkpointer.close()
    return str(directory), jax.device_get(state)


def test_same_model_takes_the_params_and_keeps_a_fresh_optimizer(trained):
    directory, saved = trained
    trainer = _trainer(get_preset("decoder-tiny", **DECODER), MeshConfig(1, 2, 1))  # another mesh
    fresh = trainer.init_state(3, EXAMPLE)
    state = warm_start(fresh, directory, trainer.model.config)
    assert_bitwise_equal(state.params, saved.params)
    assert_bitwise_equal(state.opt_state, jax.device_get(fresh.opt_state))
    assert int(state.step) == 0
    assert_not_equal(state.params, jax.device_get(fresh.params))


def test_quiet_star_starts_from_a_decoder_lm(trained):
    directory, saved = trained
    config = tiny_config(**DECODER)
    trainer = _trainer(config)
    fresh = jax.device_get(trainer.init_state(3, EXAMPLE))
    state = jax.device_get(warm_start(trainer.init_state(3, EXAMPLE), directory, config))
    for name in ("token_embedder", "decoder"):
        assert_bitwise_equal(state.params[name], saved.params[name])
    derived = thought_init(saved.params["token_embedder"]["embedding"], config)
    for name in ("start_thought", "end_thought"):
        np.testing.assert_array_equal(state.params[name], derived)
        assert not np.array_equal(state.params[name], fresh.params[name])
    assert_bitwise_equal(state.params["mixing_head"], fresh.params["mixing_head"])
    # Both thoughts hold the same value in separate buffers: a step donates each of them.
    started = warm_start(trainer.init_state(3, EXAMPLE), directory, config)
    after, _ = trainer.train_step(started, EXAMPLE)
    assert int(after.step) == 1


def test_another_model_is_refused_naming_the_param(trained):
    directory, _ = trained
    trainer = _trainer(get_preset("decoder-tiny", vocab_size=256, mlp_dim=96))
    with pytest.raises(CheckpointMismatchError, match="mlp"):
        warm_start(trainer.init_state(0, EXAMPLE), directory, trainer.model.config)
