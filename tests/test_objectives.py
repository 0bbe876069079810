"""Objectives in t5x_rationale/objectives against slow, explicit numpy references.

The cross-entropy reference materialises the full (smoothed) target distribution q over the
vocabulary and computes KL-style T5X loss -sum(q * log_softmax(logits)) - H(q) plus
z_loss * logsumexp(logits)^2 in float64, one token at a time.
"""

from __future__ import annotations

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from t5x_rationale.architectures import build_model, get_preset, model_inputs
from t5x_rationale.benchmarks.random_batches import RandomBatches
from t5x_rationale.objectives import token_accuracy, token_cross_entropy, token_loss, weighted_mean

# ================================================================== numpy references


def np_smoothed_targets(target: int, vocab: int, label_smoothing: float) -> np.ndarray:
    """The full target distribution: 1 - ls on the target, ls / (V - 1) on every other id."""
    q = np.full(vocab, label_smoothing / (vocab - 1), np.float64)
    q[target] = 1.0 - label_smoothing
    return q


def np_token_cross_entropy(logits, targets, *, z_loss, label_smoothing):
    """Per-token (loss incl. z-term, z-term) with explicit loops; float64."""
    logits = np.asarray(logits, np.float64)
    targets = np.asarray(targets)
    vocab = logits.shape[-1]
    loss = np.empty(targets.shape, np.float64)
    z_terms = np.empty(targets.shape, np.float64)
    for idx in np.ndindex(*targets.shape):
        row = logits[idx]
        m = max(float(v) for v in row)
        log_z = m + math.log(sum(math.exp(float(v) - m) for v in row))
        log_probs = row - log_z
        q = np_smoothed_targets(int(targets[idx]), vocab, label_smoothing)
        cross = -float(np.sum(q * log_probs))
        entropy = -sum(float(p) * math.log(float(p)) for p in q if p > 0)
        z = z_loss * log_z**2
        loss[idx] = cross - entropy + z
        z_terms[idx] = z
    return loss, z_terms


def jnp_naive_cross_entropy(logits, targets, *, z_loss, label_smoothing):
    """Differentiable naive version of the reference (one-hot targets materialised)."""
    vocab = logits.shape[-1]
    low = label_smoothing / (vocab - 1)
    q = jax.nn.one_hot(targets, vocab) * (1.0 - label_smoothing - low) + low
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    entropy = -jnp.sum(jnp.where(q > 0, q * jnp.log(jnp.where(q > 0, q, 1.0)), 0.0), axis=-1)
    log_z = jax.nn.logsumexp(logits, axis=-1)
    return -jnp.sum(q * log_probs, axis=-1) - entropy + z_loss * log_z**2


def np_weighted_mean(values, weights):
    values, weights = np.asarray(values, np.float64), np.asarray(weights, np.float64)
    total = 0.0
    num = 0.0
    for v, w in zip(values.ravel(), weights.ravel()):
        num += float(v) * float(w)
        total += float(w)
    return num / max(total, 1e-8), total


# ============================================================ token_cross_entropy


def _random_logits(seed, shape, scale=3.0):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32) * scale


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
@pytest.mark.parametrize("z_loss", [0.0, 1e-4])
def test_token_cross_entropy_matches_full_distribution_reference(label_smoothing, z_loss):
    vocab = 37
    logits = _random_logits(0, (3, 5, vocab))
    targets = np.random.default_rng(1).integers(0, vocab, (3, 5))
    loss, z_term = token_cross_entropy(
        jnp.asarray(logits), jnp.asarray(targets), z_loss=z_loss, label_smoothing=label_smoothing
    )
    ref_loss, ref_z = np_token_cross_entropy(
        logits, targets, z_loss=z_loss, label_smoothing=label_smoothing
    )
    assert loss.shape == targets.shape and loss.dtype == jnp.float32
    assert z_term.shape == targets.shape and z_term.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(loss), ref_loss, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(z_term), ref_z, rtol=1e-5, atol=1e-9)
    if z_loss == 0.0:
        assert np.all(np.asarray(z_term) == 0.0)
    else:
        assert np.all(np.asarray(z_term) > 0.0)


def test_token_cross_entropy_perfect_smoothed_prediction_scores_zero():
    """Logits equal to log q (the smoothed targets) give loss 0 (entropy is subtracted)."""
    vocab, ls = 11, 0.1
    targets = np.array([0, 3, 10])
    logits = np.stack([np.log(np_smoothed_targets(t, vocab, ls)) for t in targets]).astype(
        np.float32
    )
    loss, _ = token_cross_entropy(jnp.asarray(logits), jnp.asarray(targets), label_smoothing=ls)
    np.testing.assert_allclose(np.asarray(loss), 0.0, atol=2e-6)
    # Without subtracting the entropy, the loss would be H(q) > 0.3 per token.
    entropy = -sum(p * math.log(p) for p in np_smoothed_targets(0, vocab, ls))
    assert entropy > 0.3


def test_token_cross_entropy_1d_targets_and_bfloat16_logits():
    vocab = 16
    logits = _random_logits(2, (7, vocab)).astype(jnp.bfloat16)
    targets = np.arange(7) * 2
    loss, _ = token_cross_entropy(
        jnp.asarray(logits), jnp.asarray(targets), z_loss=1e-4, label_smoothing=0.1
    )
    assert loss.dtype == jnp.float32 and loss.shape == (7,)
    ref, _ = np_token_cross_entropy(
        np.asarray(logits.astype(np.float32)), targets, z_loss=1e-4, label_smoothing=0.1
    )
    np.testing.assert_allclose(np.asarray(loss), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
@pytest.mark.parametrize("z_loss", [0.0, 1e-4])
def test_token_cross_entropy_gradient_matches_naive_reference(label_smoothing, z_loss):
    vocab = 29
    logits = jnp.asarray(_random_logits(3, (4, 6, vocab)))
    targets = jnp.asarray(np.random.default_rng(4).integers(0, vocab, (4, 6)))
    cotangent = jnp.asarray(np.random.default_rng(5).uniform(0.0, 1.0, (4, 6)).astype(np.float32))

    def lib(x):
        return jnp.sum(
            token_cross_entropy(x, targets, z_loss=z_loss, label_smoothing=label_smoothing)[0]
            * cotangent
        )

    def naive(x):
        return jnp.sum(
            jnp_naive_cross_entropy(x, targets, z_loss=z_loss, label_smoothing=label_smoothing)
            * cotangent
        )

    lib_value, g_lib = jax.jit(jax.value_and_grad(lib))(logits)
    ref_value, g_ref = jax.jit(jax.value_and_grad(naive))(logits)
    np.testing.assert_allclose(float(lib_value), float(ref_value), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(g_lib), np.asarray(g_ref), rtol=1e-5, atol=1e-6)
    # Closed form of the gradient: c * (softmax * (1 + 2 z log Z) - q).
    x = np.asarray(logits, np.float64)
    log_z = np.log(np.sum(np.exp(x - x.max(-1, keepdims=True)), axis=-1)) + x.max(-1)
    p = np.exp(x - log_z[..., None])
    q = np.stack(
        [
            np.stack([np_smoothed_targets(int(t), vocab, label_smoothing) for t in row])
            for row in np.asarray(targets)
        ]
    )
    closed = np.asarray(cotangent)[..., None] * (p * (1.0 + 2.0 * z_loss * log_z[..., None]) - q)
    np.testing.assert_allclose(np.asarray(g_lib), closed, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5])
def test_token_cross_entropy_rejects_invalid_label_smoothing(bad):
    with pytest.raises(ValueError, match="label_smoothing"):
        token_cross_entropy(jnp.zeros((2, 5)), jnp.zeros((2,), jnp.int32), label_smoothing=bad)


def test_token_accuracy_is_argmax_equals_target_with_first_index_ties():
    rng = np.random.default_rng(11)
    logits = rng.standard_normal((3, 5, 9)).astype(np.float32)
    targets = rng.integers(0, 9, (3, 5)).astype(np.int32)
    targets[0, :3] = np.argmax(logits[0, :3], axis=-1)  # some hits among the misses
    # Ties: the target shares the maximum with an earlier id (a miss for argmax), with a
    # later id (a hit), or is only tied below the maximum (a miss).
    logits[1, :3] = 0.0
    logits[1, 0, [2, 6]] = 5.0
    logits[1, 1, [2, 6]] = 5.0
    logits[1, 2, [3, 4]] = 1.0
    logits[1, 2, 8] = 2.0
    targets[1, :3] = [6, 2, 4]
    got = np.asarray(jax.jit(token_accuracy)(jnp.asarray(logits), jnp.asarray(targets)))
    expected = np.array(
        [
            [float(int(np.argmax(row)) == t) for row, t in zip(logits[b], targets[b])]
            for b in range(3)
        ]
    )
    np.testing.assert_array_equal(got, expected)
    assert got[0, :3].tolist() == [1.0, 1.0, 1.0] and got[1, :3].tolist() == [0.0, 1.0, 0.0]


def test_weighted_mean_matches_reference_and_handles_zero_weights():
    rng = np.random.default_rng(6)
    values = rng.normal(size=(3, 4)).astype(np.float32)
    weights = rng.uniform(0.0, 2.0, (3, 4)).astype(np.float32)
    mean, total = weighted_mean(jnp.asarray(values), jnp.asarray(weights))
    ref_mean, ref_total = np_weighted_mean(values, weights)
    np.testing.assert_allclose(float(mean), ref_mean, rtol=1e-6)
    np.testing.assert_allclose(float(total), ref_total, rtol=1e-6)
    mean0, total0 = weighted_mean(jnp.asarray(values), jnp.zeros((3, 4)))
    assert float(mean0) == 0.0 and float(total0) == 0.0


# ======================================================================= token_loss

_MODELS: dict = {}
_PARAMS: dict = {}


def _random_params(model, batch):
    """Random parameters of the model's shapes (numpy; avoids compiling the RNG-heavy init)."""
    key = dataclasses.replace(model.config, dropout_rate=0.0)
    if key not in _PARAMS:
        inputs = {k: jnp.asarray(v) for k, v in model_inputs(batch).items()}
        abstract = jax.eval_shape(
            lambda: nn.unbox(model.init(jax.random.PRNGKey(0), **inputs)["params"])
        )
        rng = np.random.default_rng(0)

        def fill(path, leaf):
            name = jax.tree_util.keystr(path)
            if "scale" in name:  # norm scales
                value = 1.0 + 0.1 * rng.normal(size=leaf.shape)
            elif "kernel" in name:
                value = rng.normal(size=leaf.shape) / math.sqrt(leaf.shape[0])
            else:  # embeddings, relative position biases
                value = rng.normal(size=leaf.shape)
            return jnp.asarray(value, leaf.dtype)

        _PARAMS[key] = jax.tree_util.tree_map_with_path(fill, abstract)
    return _PARAMS[key]


def _setup(preset, **overrides):
    """(config, params, run) built once per config.

    `run(params, batch, rng, z_loss=..., label_smoothing=...)` returns token_loss's
    (loss, metrics) together with the reference logits model.apply(..., deterministic=True),
    in one jitted function (compilation dominates the cost on CPU; the two computations are
    independent code paths).
    """
    key = (preset, tuple(sorted(overrides.items())))
    if key not in _MODELS:
        config = get_preset(preset, **overrides)
        model = build_model(config)
        params = _random_params(model, _batch(config))

        def run(params, batch, rng, *, z_loss=1e-4, label_smoothing=0.0):
            loss, metrics = token_loss(
                model, params, batch, rng, z_loss=z_loss, label_smoothing=label_smoothing
            )
            logits = model.apply({"params": params}, **model_inputs(batch), deterministic=True)
            return loss, metrics, logits

        _MODELS[key] = (config, params, jax.jit(run, static_argnames=("z_loss", "label_smoothing")))
    return _MODELS[key]


def _batch(config, seed=0, batch_size=3, target_length=8, input_length=6):
    is_t5 = config.architecture == "encoder_decoder"
    data = RandomBatches(
        vocab_size=config.vocab_size,
        batch_size=batch_size,
        target_length=target_length,
        input_length=input_length if is_t5 else 0,
        seed=seed,
    )
    return next(data)


def _make_accuracy_nontrivial(batch, logits):
    """Sets every other real target to the model's argmax so accuracy is neither 0 nor 1."""
    batch = dict(batch)
    targets = batch["decoder_target_tokens"].copy()
    argmax = logits.argmax(-1)
    mask = np.zeros(targets.shape, bool)
    mask[:, ::2] = True
    mask &= targets > 0
    targets[mask] = argmax[mask]
    batch["decoder_target_tokens"] = targets
    return batch


# The cross-entropy arithmetic is shared; T5 checks the encoder-decoder path of the same objective.
@pytest.mark.parametrize(
    "preset,z_loss,label_smoothing",
    [("decoder-tiny", 1e-4, 0.0), ("decoder-tiny", 0.0, 0.1), ("t5-tiny", 1e-4, 0.1)],
)
def test_token_loss_matches_reference(preset, z_loss, label_smoothing):
    config, params, run = _setup(preset)
    batch = _batch(config, seed=1)
    kwargs = dict(z_loss=z_loss, label_smoothing=label_smoothing)
    logits = np.asarray(run(params, batch, None, **kwargs)[2], np.float64)
    batch = _make_accuracy_nontrivial(batch, logits)
    # Non-uniform weights (but zero on padding) so the weighting itself is exercised.
    weights = batch["decoder_loss_weights"] * np.random.default_rng(2).uniform(
        0.5, 2.0, batch["decoder_loss_weights"].shape
    ).astype(np.float32)
    batch["decoder_loss_weights"] = weights

    loss, metrics, logits_again = run(params, batch, None, **kwargs)
    # targets do not feed the model
    np.testing.assert_array_equal(np.asarray(logits_again), logits.astype(np.float32))

    per_token, z_terms = np_token_cross_entropy(
        logits, batch["decoder_target_tokens"], z_loss=z_loss, label_smoothing=label_smoothing
    )
    ref_loss, ref_total = np_weighted_mean(per_token, weights)
    correct = (logits.argmax(-1) == batch["decoder_target_tokens"]).astype(np.float64)
    ref_accuracy, _ = np_weighted_mean(correct, weights)
    ref_z, _ = np_weighted_mean(z_terms, weights)

    assert set(metrics) == {"loss", "z_loss", "accuracy", "denominator"}
    np.testing.assert_allclose(float(loss), ref_loss, rtol=1e-5)
    np.testing.assert_allclose(float(metrics["loss"]), ref_loss, rtol=1e-5)
    np.testing.assert_allclose(float(metrics["accuracy"]), ref_accuracy, rtol=1e-6)
    assert 0.2 < ref_accuracy < 0.8  # the accuracy check is not vacuous
    np.testing.assert_allclose(float(metrics["z_loss"]), ref_z, rtol=1e-5, atol=1e-12)
    assert (ref_z > 0) == (z_loss > 0)
    np.testing.assert_allclose(float(metrics["denominator"]), ref_total, rtol=1e-6)
    np.testing.assert_allclose(float(metrics["denominator"]), float(weights.sum()), rtol=1e-6)


def test_token_loss_without_weights_uses_nonzero_targets():
    config, params, run = _setup("decoder-tiny")
    batch = _batch(config, seed=3)
    targets = batch["decoder_target_tokens"].copy()
    # a zero target inside the real tokens gets no weight without explicit weights
    targets[0, 1] = 0
    batch["decoder_target_tokens"] = targets
    del batch["decoder_loss_weights"]

    loss, metrics, logits = run(params, batch, None)

    weights = (targets > 0).astype(np.float64)
    per_token, _ = np_token_cross_entropy(
        np.asarray(logits), targets, z_loss=1e-4, label_smoothing=0.0
    )
    ref_loss, ref_total = np_weighted_mean(per_token, weights)
    np.testing.assert_allclose(float(loss), ref_loss, rtol=1e-5)
    assert float(metrics["denominator"]) == ref_total == float((targets > 0).sum())
    # Counting every position (including padding) would give a different answer.
    unweighted, _ = np_weighted_mean(per_token, np.ones_like(weights))
    assert abs(unweighted - ref_loss) > 1e-3


def test_token_loss_dropout_is_controlled_by_rng():
    config, params, run = _setup("decoder-tiny", dropout_rate=0.3, num_layers=1)
    batch = _batch(config, seed=4)

    loss_a, _, logits = run(params, batch, None)
    loss_b, _, _ = run(params, batch, None)
    per_token, _ = np_token_cross_entropy(
        np.asarray(logits), batch["decoder_target_tokens"], z_loss=1e-4, label_smoothing=0.0
    )
    ref_loss, _ = np_weighted_mean(per_token, batch["decoder_loss_weights"])
    assert float(loss_a) == float(loss_b)
    np.testing.assert_allclose(float(loss_a), ref_loss, rtol=1e-5)

    key1, key2 = jax.random.PRNGKey(1), jax.random.PRNGKey(2)
    drop1, _, _ = run(params, batch, key1)
    drop1_again, _, _ = run(params, batch, key1)
    drop2, _, _ = run(params, batch, key2)
    assert float(drop1) == float(drop1_again)
    assert abs(float(drop1) - float(drop2)) > 1e-4
    assert abs(float(drop1) - float(loss_a)) > 1e-4
