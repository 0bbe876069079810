"""PINTO: the loss against a slow reference, the perturbation's statistics, the multiple-choice
corpus and its converter."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from random_params import random_params

from t5x_rationale.architectures import build_model, get_preset
from t5x_rationale.objectives.pinto import PADDED_CHOICE_SCORE, perturb_rationale, pinto_loss

B, LE, C, LC, VOCAB = 3, 16, 4, 5, 256
PREFIX = [4, 7, 3]  # question + choices tokens per row
RATIONALE = [6, 8, 5]
CHOICE_LENGTHS = [[2, 3, 1, 4], [3, 1, 2, 0], [4, 2, 0, 0]]  # 0: a padded slot
LABELS = [1, 2, 0]


def _batch(seed=0):
    rng = np.random.default_rng(seed)
    enc = np.zeros((B, LE), np.int32)
    rmask = np.zeros((B, LE), np.int32)
    for b, (p, r) in enumerate(zip(PREFIX, RATIONALE)):
        enc[b, : p + r] = rng.integers(5, VOCAB, p + r)
        enc[b, p + r] = 1
        rmask[b, p : p + r] = 1
    lengths = np.array(CHOICE_LENGTHS)
    targets = rng.integers(3, VOCAB, (B, C, LC)).astype(np.int32)
    targets *= np.arange(LC)[None, None] < lengths[..., None]
    return {
        "encoder_input_tokens": enc,
        "rationale_mask": rmask,
        "choice_input_tokens": np.pad(targets[..., :-1], ((0, 0), (0, 0), (1, 0))),
        "choice_target_tokens": targets,
        "choice_loss_weights": (targets > 0).astype(np.float32),
        "choice_mask": (lengths > 0).astype(np.int32),
        "choice_label": np.array(LABELS, np.int32),
    }


@pytest.fixture(scope="module")
def model_and_params():
    model = build_model(get_preset("t5-tiny"))
    batch = _batch()
    params = random_params(
        model,
        encoder_input_tokens=batch["encoder_input_tokens"],
        decoder_input_tokens=batch["choice_input_tokens"][:, 0],
    )
    return model, params


def _reference_scores(model, params, batch, encoder_tokens):
    """[B][C] mean log-likelihood of each real choice (None for padded slots), float64,
    from the plain teacher-forced forward of each (row, choice) pair."""
    enc = np.repeat(np.asarray(encoder_tokens), C, axis=0)
    dec = np.asarray(batch["choice_input_tokens"]).reshape(B * C, LC)
    logits = np.asarray(model.apply({"params": params}, enc, dec), np.float64)
    logits = logits.reshape(B, C, LC, -1)
    scores = []
    for b in range(B):
        row = []
        for c in range(C):
            if batch["choice_mask"][b, c] == 0:
                row.append(None)
                continue
            total, count = 0.0, 0
            for t in range(LC):
                if batch["choice_loss_weights"][b, c, t] == 0:
                    continue
                x = logits[b, c, t]
                log_z = np.log(np.sum(np.exp(x - x.max()))) + x.max()
                total += x[batch["choice_target_tokens"][b, c, t]] - log_z
                count += 1
            row.append(total / count)  # normalised by the choice's length (EOS included)
        scores.append(row)
    return scores


def _reference_ce(scores, labels, eps):
    """Mean over rows of -sum_c q_c log softmax(scores)_c, q = (1 - eps) on the label and
    eps / K on each of the K real choices."""
    losses = []
    for row, label in zip(scores, labels):
        real = [c for c, s in enumerate(row) if s is not None]
        m = max(row[c] for c in real)
        log_z = m + np.log(sum(np.exp(row[c] - m) for c in real))
        q = {c: eps / len(real) + (1 - eps) * (c == label) for c in real}
        losses.append(-sum(q[c] * (row[c] - log_z) for c in real))
    return float(np.mean(losses))


def _masked(batch, mask_id):
    return np.where(batch["rationale_mask"] > 0, mask_id, batch["encoder_input_tokens"])


def counterfactual_case(batch, case):
    """(pinto_loss kwargs, the perturbed context the loss will score) without an rng."""
    if case == "masked_whole":  # the counterfactual copy is known without the rng
        return dict(mask_probability=1.0, mask_id=2), _masked(batch, 2)
    # the loss draws its copy from the first half of split(key 0) when rng is None
    key = jax.random.split(jax.random.PRNGKey(0))[0]
    perturbed, _ = perturb_rationale(
        key,
        jnp.asarray(batch["encoder_input_tokens"]),
        jnp.asarray(batch["rationale_mask"]),
        random_id_high=VOCAB,
    )
    return {}, perturbed


@pytest.mark.parametrize("case", ["masked_whole", "drawn"])
def test_loss_matches_the_slow_reference(model_and_params, case):
    model, params = model_and_params
    batch = _batch()
    kwargs, perturbed = counterfactual_case(batch, case)
    loss, metrics = pinto_loss(model, params, batch, None, **kwargs)
    factual = _reference_scores(model, params, batch, batch["encoder_input_tokens"])
    counterfactual = _reference_scores(model, params, batch, perturbed)
    task = _reference_ce(factual, LABELS, 0.0)
    cf = _reference_ce(counterfactual, LABELS, 0.1)
    np.testing.assert_allclose(float(metrics["task_loss"]), task, rtol=2e-5)
    np.testing.assert_allclose(float(metrics["cf_loss"]), cf, rtol=2e-5)
    np.testing.assert_allclose(float(loss), task + 1.0 * cf, rtol=2e-5)
    best = [max((s, c) for c, s in enumerate(row) if s is not None)[1] for row in factual]
    expected_accuracy = np.mean([b == label for b, label in zip(best, LABELS)])
    np.testing.assert_allclose(float(metrics["accuracy"]), expected_accuracy)
    assert float(metrics["denominator"]) == B and float(metrics["skipped_rows"]) == 0


def test_padded_choices_never_win_and_their_content_is_ignored(model_and_params):
    model, params = model_and_params
    batch = _batch()
    loss, _ = pinto_loss(model, params, batch, None)
    noisy = dict(batch)
    garbage = np.full((LC,), 9, np.int32)
    for name in ("choice_target_tokens", "choice_input_tokens"):
        noisy[name] = batch[name].copy()
        noisy[name][1, 3], noisy[name][2, 2:] = garbage, garbage
    noisy["choice_loss_weights"] = (noisy["choice_target_tokens"] > 0).astype(np.float32)
    noisy_loss, _ = pinto_loss(model, params, noisy, None)
    np.testing.assert_allclose(float(noisy_loss), float(loss), rtol=1e-6)
    # a row whose only real choice is the label scores it with probability 1 (loss 0)
    single = dict(batch, choice_mask=np.array([[1, 0, 0, 0]] * B, np.int32))
    single["choice_label"] = np.zeros(B, np.int32)
    _, metrics = pinto_loss(model, params, single, None)
    assert abs(float(metrics["task_loss"])) < 1e-6 and float(metrics["accuracy"]) == 1.0


def test_a_label_on_a_padded_slot_is_skipped_and_counted(model_and_params):
    model, params = model_and_params
    batch = dict(_batch(), choice_label=np.array([1, 3, 0], np.int32))  # row 1: slot 3 is padded
    _, metrics = pinto_loss(model, params, batch, None)
    assert float(metrics["skipped_rows"]) == 1 and float(metrics["denominator"]) == 2


def test_gradients_are_finite_and_the_perturbation_follows_the_rng(model_and_params):
    model, params = model_and_params
    batch = _batch()

    def loss_fn(p, rng):
        return pinto_loss(model, p, batch, rng)

    rng = jax.random.PRNGKey(3)
    (loss, metrics), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(params, rng)
    leaves = jax.tree.leaves(grads)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in leaves)
    assert sum(float(jnp.sum(jnp.abs(g))) for g in leaves) > 0
    again, _ = jax.jit(loss_fn)(params, rng)
    assert float(again) == float(loss)  # the same step rng gives the same perturbed copy
    cf = {float(jax.jit(loss_fn)(params, jax.random.PRNGKey(k))[1]["cf_loss"]) for k in range(4)}
    assert len(cf) > 1


def test_perturbation_statistics():
    rows, length = 4000, 40
    rng = np.random.default_rng(1)
    tokens = rng.integers(5, 1000, (rows, length)).astype(np.int32)
    starts, sizes = rng.integers(0, 10, rows), rng.integers(1, 25, rows)
    pos = np.arange(length)[None]
    rmask = ((pos >= starts[:, None]) & (pos < (starts + sizes)[:, None])).astype(np.int32)
    perturb = jax.jit(
        lambda key: perturb_rationale(
            key, jnp.asarray(tokens), jnp.asarray(rmask), random_id_low=5, random_id_high=1000
        )
    )
    out, masked = (np.asarray(x) for x in perturb(jax.random.PRNGKey(0)))
    again, _ = perturb(jax.random.PRNGKey(0))
    np.testing.assert_array_equal(np.asarray(again), out)
    assert not np.array_equal(np.asarray(perturb(jax.random.PRNGKey(1))[0]), out)
    outside = rmask == 0
    np.testing.assert_array_equal(out[outside], tokens[outside])  # only the rationale changes
    assert abs(masked.mean() - 0.5) < 0.03
    assert np.all(out[masked][rmask[masked] > 0] == 2)
    kept = ~masked
    changed = (out != tokens) & (rmask > 0)
    # exactly round(0.3 n) drawn per row (a draw may equal the old token: about 1 in 1000)
    expected = np.floor(0.3 * sizes + 0.5)
    assert np.all(changed[kept].sum(-1) <= expected[kept])
    assert abs(changed[kept].sum() / expected[kept].sum() - 1) < 0.01
    assert abs(changed[kept].sum() / rmask[kept].sum() - 0.3) < 0.02
    drawn = out[changed & kept[:, None]]
    assert drawn.min() >= 5 and drawn.max() < 1000


def test_padded_choice_scores_take_no_probability(model_and_params):
    from t5x_rationale.objectives.pinto import choice_scores

    model, params = model_and_params
    batch = {k: jnp.asarray(v) for k, v in _batch().items()}
    scores = choice_scores(model, params, batch, batch["encoder_input_tokens"], None)
    padded = np.asarray(batch["choice_mask"]) == 0
    assert np.all(np.asarray(scores)[padded] == PADDED_CHOICE_SCORE)
    probs = np.asarray(jax.nn.softmax(scores, axis=-1))
    assert np.all(probs[padded] == 0)
    assert not np.any(padded[np.arange(B), np.argmax(probs, -1)])
