"""PINTO with a decoder-only student: each (row, choice) is one causal sequence, context then
choice; checked against a reference that runs every unpadded `context ++ choice` on its own."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from random_params import random_params
from test_pinto import LABELS, VOCAB, B, C, _batch, _reference_ce, counterfactual_case

from t5x_rationale.architectures import build_model, get_preset
from t5x_rationale.objectives.pinto import choice_predictions, pinto_loss
from t5x_rationale.runtime.partitioning import MeshConfig, Partitioner, create_mesh
from t5x_rationale.runtime.trainer import Trainer


@pytest.fixture(scope="module")
def decoder():
    model = build_model(get_preset("decoder-tiny", vocab_size=VOCAB))
    return model, random_params(model, decoder_input_tokens=np.ones((1, 8), np.int32))


def _log_softmax(x):
    return x - (np.log(np.sum(np.exp(x - x.max()))) + x.max())


def _reference_scores(model, params, batch, context):
    """[B][C] mean log-probability of each real choice's tokens after the row's context (up to
    its last non-zero token), float64, one plain forward per (row, choice); None: padded.
    Each sequence is padded after its end to one width, so the forward compiles once (the
    model is causal: what follows a position does not change it)."""
    width = np.shape(context)[1] + batch["choice_target_tokens"].shape[-1]
    forward = jax.jit(lambda p, x: model.apply({"params": p}, x))
    scores = []
    for b in range(B):
        ctx = [int(t) for t in np.asarray(context)[b]]
        n = max(i + 1 for i, t in enumerate(ctx) if t != 0)
        row = []
        for c in range(C):
            if batch["choice_mask"][b, c] == 0:
                row.append(None)
                continue
            weighted = batch["choice_loss_weights"][b, c] > 0
            choice = [int(t) for t in batch["choice_target_tokens"][b, c][weighted]]
            seq = ctx[:n] + choice
            inputs = np.zeros((1, width), np.int32)
            inputs[0, : len(seq)] = [0] + seq[:-1]
            logits = np.asarray(forward(params, inputs), np.float64)[0]
            total = sum(_log_softmax(logits[n + k])[t] for k, t in enumerate(choice))
            row.append(total / len(choice))
        scores.append(row)
    return scores


@pytest.mark.parametrize("case", ["masked_whole", "drawn"])
def test_decoder_loss_matches_the_slow_reference(decoder, case):
    model, params = decoder
    batch = _batch()
    kwargs, perturbed = counterfactual_case(batch, case)
    loss, metrics = pinto_loss(model, params, batch, None, **kwargs)
    factual = _reference_scores(model, params, batch, batch["encoder_input_tokens"])
    counterfactual = _reference_scores(model, params, batch, perturbed)
    task, cf = _reference_ce(factual, LABELS, 0.0), _reference_ce(counterfactual, LABELS, 0.1)
    np.testing.assert_allclose(float(metrics["task_loss"]), task, rtol=2e-5)
    np.testing.assert_allclose(float(metrics["cf_loss"]), cf, rtol=2e-5)
    np.testing.assert_allclose(float(loss), task + cf, rtol=2e-5)
    best = [max((s, c) for c, s in enumerate(row) if s is not None)[1] for row in factual]
    predicted, counted = choice_predictions(model, params, batch)
    np.testing.assert_array_equal(np.asarray(predicted), best)
    assert np.asarray(counted).all()


def test_decoder_gradients_are_finite_and_padding_is_invisible(decoder):
    model, params = decoder
    batch = _batch()

    def loss_fn(p, b, rng):
        return pinto_loss(model, p, b, rng)[0]

    rng = jax.random.PRNGKey(3)
    loss, grads = jax.jit(jax.value_and_grad(loss_fn))(params, batch, rng)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))
    assert sum(float(jnp.sum(jnp.abs(g))) for g in jax.tree.leaves(grads)) > 0
    # wider context and choice padding change nothing (a causal model never sees them); the
    # rationale masked whole, so that the perturbation's draws (shaped as the rows) do not count
    wider = dict(batch)
    for name in ("encoder_input_tokens", "rationale_mask"):
        wider[name] = np.pad(batch[name], ((0, 0), (0, 5)))
    for name in ("choice_target_tokens", "choice_input_tokens", "choice_loss_weights"):
        wider[name] = np.pad(batch[name], ((0, 0), (0, 0), (0, 3)))
    masked = jax.jit(lambda b: pinto_loss(model, params, b, None, mask_probability=1.0)[0])
    np.testing.assert_allclose(float(masked(wider)), float(masked(batch)), rtol=1e-5)


def _train_steps(mesh_shape, devices=None):
    """Two SGD steps of a decoder-only PINTO student from a fresh init; losses and params."""
    parts = [_batch(seed) for seed in range(4, 8)]
    batch = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}  # 12 rows
    answer = (np.arange(len(batch["choice_label"])), batch["choice_label"])
    batch["decoder_input_tokens"] = batch["choice_input_tokens"][answer]  # as the converter
    partitioner = Partitioner(create_mesh(MeshConfig(*mesh_shape), devices))
    model = build_model(get_preset("decoder-tiny", vocab_size=VOCAB))
    trainer = Trainer(model, pinto_loss, optax.sgd(0.5), partitioner)
    state = trainer.init_state(0, batch)
    losses = []
    for _ in range(2):
        state, metrics = trainer.train_step(state, partitioner.host_batch_to_global(batch))
        losses.append(float(metrics["loss"]))
    return losses, jax.tree.map(np.asarray, jax.device_get(state.params))


def test_decoder_train_steps_sharded_match_one_device():
    losses_1, params_1 = _train_steps((1, 1, 1), jax.devices()[:1])
    losses_4, params_4 = _train_steps((2, 2, 1), jax.devices()[:4])
    assert losses_1[1] < losses_1[0]
    np.testing.assert_allclose(losses_4, losses_1, rtol=1e-5)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), params_4, params_1
    )
