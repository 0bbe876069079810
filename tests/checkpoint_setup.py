"""The trained and saved decoder-tiny state that the checkpoint tests restore, and their
comparisons.

One decoder-tiny Trainer on a 2x2x2 mesh is built, trained and saved once per test module
(its train step compiles once); the tests restore from those checkpoints, write small ones
of their own, or reuse the compiled step through `train_loop`.
"""

from __future__ import annotations

import types

import jax
import numpy as np
import pytest

from t5x_rationale.architectures import build_model, get_preset
from t5x_rationale.benchmarks.random_batches import RandomBatches
from t5x_rationale.objectives import token_loss
from t5x_rationale.runtime.checkpoints import Checkpointer
from t5x_rationale.runtime.optimizers import OptimizerConfig, make_optimizer
from t5x_rationale.runtime.partitioning import MeshConfig, Partitioner, create_mesh
from t5x_rationale.runtime.trainer import Trainer

BATCH, LENGTH, VOCAB = 8, 8, 256
SAVE_MESH = MeshConfig(2, 2, 2)
# Example batch: fixes the shapes of the state (its values are never used).
EXAMPLE = next(RandomBatches(vocab_size=VOCAB, batch_size=BATCH, target_length=LENGTH))


def make_trainer(mesh, preset: str = "decoder-tiny", **overrides) -> Trainer:
    config = get_preset(preset, **overrides)
    tx, schedule = make_optimizer(OptimizerConfig(name="adamw", learning_rate=1e-2))
    return Trainer(
        build_model(config), token_loss, tx, Partitioner(mesh), learning_rate_fn=schedule
    )


def make_data(position: int = 0) -> RandomBatches:
    return RandomBatches(
        vocab_size=VOCAB, batch_size=BATCH, target_length=LENGTH, seed=1, position=position
    )


def no_init():
    pytest.fail("init_fn must not be called when a checkpoint is restored")


def leaves_with_paths(tree):
    return [(jax.tree_util.keystr(p), x) for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]]


def assert_bitwise_equal(actual, expected):
    """Same tree structure, and every leaf has the same shape, dtype and bytes."""
    a, e = leaves_with_paths(actual), leaves_with_paths(expected)
    assert [p for p, _ in a] == [p for p, _ in e]
    for (path, x), (_, y) in zip(a, e):
        x, y = np.asarray(jax.device_get(x)), np.asarray(jax.device_get(y))
        assert (x.shape, x.dtype) == (y.shape, y.dtype), path
        assert x.tobytes() == y.tobytes(), f"{path} differs"


def assert_not_equal(a, b):
    assert any(
        np.asarray(x).tobytes() != np.asarray(y).tobytes()
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))
    )


def saved_checkpoints(tmp_path_factory):
    """A 2-step state saved in run_a (step 2) and its 3-step successor saved in run_b (step 3)."""
    root = tmp_path_factory.mktemp("checkpoints")
    trainer = make_trainer(create_mesh(SAVE_MESH))
    partitioner = trainer.partitioner
    state = trainer.init_state(0, EXAMPLE)
    initial = jax.device_get(state)
    data = make_data()
    losses = {}
    for step in (1, 2):
        state, metrics = trainer.train_step(state, partitioner.host_batch_to_global(next(data)))
        losses[step] = float(metrics["loss"])
    host2, data2 = jax.device_get(state), data.get_state()
    run_a = root / "run_a"
    checkpointer = Checkpointer(str(run_a), save_every=1)
    assert checkpointer.save(2, state, data2)
    checkpointer.wait()
    checkpointer.close()

    state, _ = trainer.train_step(state, partitioner.host_batch_to_global(next(data)))
    host3, data3 = jax.device_get(state), data.get_state()
    run_b = root / "run_b"
    checkpointer = Checkpointer(str(run_b), save_every=1)
    assert checkpointer.save(3, state, data3)
    checkpointer.wait()
    checkpointer.close()
    return types.SimpleNamespace(
        root=root,
        trainer=trainer,
        initial=initial,
        host2=host2,
        host3=host3,
        data2=data2,
        data3=data3,
        run_a=run_a,
        run_b=run_b,
        losses=losses,
    )
