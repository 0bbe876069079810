"""Lazily built decoder-tiny trainers sharing one model, one batch and one initial state.

XLA compilation dominates the cost on CPU, so trainers are built once per test module and a
train state initialised once is copied (host -> device) into every trainer that needs a
fresh one.
"""

from __future__ import annotations

import math

import jax
import numpy as np

from t5x_rationale.architectures import build_model, get_preset
from t5x_rationale.benchmarks.random_batches import RandomBatches
from t5x_rationale.objectives import token_loss
from t5x_rationale.runtime.optimizers import OptimizerConfig, make_optimizer
from t5x_rationale.runtime.partitioning import MeshConfig, Partitioner, create_mesh
from t5x_rationale.runtime.trainer import Trainer, host_metrics

BATCH, LENGTH = 16, 8
LR, CLIP = 0.5, 2.0


def _partitioner(data, fsdp, tensor):
    n = data * fsdp * tensor
    return Partitioner(create_mesh(MeshConfig(data, fsdp, tensor), jax.devices()[:n]))


class _Setup:
    """Lazily built trainers that share one model, one batch and one initial state."""

    def __init__(self):
        self.config = get_preset("decoder-tiny", num_layers=1)
        self.model = build_model(self.config)
        self.batch = next(
            RandomBatches(
                vocab_size=self.config.vocab_size, batch_size=BATCH, target_length=LENGTH, seed=0
            )
        )
        self.opt_config = OptimizerConfig(name="sgd", learning_rate=LR, clip_grad_norm=CLIP)
        self._trainers = {}
        self._host_state = None

    def trainer(self, mesh=(1, 1, 1), num_microbatches=1):
        key = (mesh, num_microbatches)
        if key not in self._trainers:
            tx, schedule = make_optimizer(self.opt_config)
            self._trainers[key] = Trainer(
                self.model,
                token_loss,
                tx,
                _partitioner(*mesh),
                learning_rate_fn=schedule,
                num_microbatches=num_microbatches,
            )
        return self._trainers[key]

    @property
    def host_state(self):
        """init_state(seed 0) on the 1-device mesh, fetched to the host (numpy)."""
        if self._host_state is None:
            self._host_state = jax.device_get(self.trainer().init_state(0, self.batch))
        return self._host_state

    def fresh_state(self, trainer):
        _, _, shardings, _ = trainer.layout(self.batch)
        return jax.tree.map(lambda x, s: jax.device_put(np.array(x), s), self.host_state, shardings)

    def step(self, trainer, batch=None):
        batch = self.batch if batch is None else batch
        state = self.fresh_state(trainer)
        new_state, metrics = trainer.train_step(
            state, trainer.partitioner.host_batch_to_global(batch)
        )
        return jax.device_get(new_state), host_metrics(metrics)


def _leaves(tree):
    return {
        jax.tree_util.keystr(p): np.asarray(x)
        for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]
    }


def _assert_trees_close(a, b, rtol, atol):
    la, lb = _leaves(a), _leaves(b)
    assert la.keys() == lb.keys()
    for k in la:
        np.testing.assert_allclose(la[k], lb[k], rtol=rtol, atol=atol, err_msg=k)


def _assert_trees_equal(a, b):
    la, lb = _leaves(a), _leaves(b)
    assert la.keys() == lb.keys()
    for k in la:
        np.testing.assert_array_equal(la[k], lb[k], err_msg=k)


def _global_norm(tree):
    return math.sqrt(
        sum(float(np.sum(np.asarray(x, np.float64) ** 2)) for x in jax.tree.leaves(tree))
    )
