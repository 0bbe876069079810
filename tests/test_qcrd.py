"""QCRD's contrastive loss and its discriminator against slow references written out here."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from random_params import random_params

from t5x_rationale.architectures import build_model, get_preset
from t5x_rationale.architectures.discriminator import Discriminator
from t5x_rationale.objectives.discriminator import discriminator_loss
from t5x_rationale.objectives.qcrd import (
    candidate_cross_entropy,
    contrastive_terms,
    merge_qcrd_batches,
    qcrd_loss,
    split_qcrd_batch,
)

IS_POS = np.array([True, True, False, False])  # CandidatesConverter's layout: 2 pos, 2 neg


def _reference_terms(ce, valid, is_pos, scores, w_pos, w_neg, delta):
    """Python loop over rows and candidates; ties keep the first slot (strict <)."""
    rows = ce.shape[0]
    pos_sum = neg_sum = 0.0
    no_pos = no_neg = active = 0
    for b in range(rows):
        best = {True: None, False: None}
        for k in range(ce.shape[1]):
            if not valid[b, k]:
                continue
            side = bool(is_pos[b, k])
            if best[side] is None or ce[b, k] < ce[b, best[side]]:
                best[side] = k
        p, n = best[True], best[False]
        if p is None:
            no_pos += 1
        else:
            pos_sum += w_pos * (1.0 if scores is None else scores[b, p]) * ce[b, p]
        if n is None:
            no_neg += 1
        else:
            weight = 1.0 if scores is None else 1.0 - scores[b, n]
            neg_sum += w_neg * weight * max(0.0, delta - ce[b, n])
            active += delta - ce[b, n] > 0
    has_neg = rows - no_neg
    return pos_sum / rows, neg_sum / rows, no_pos, no_neg, active / max(has_neg, 1)


def _handmade():
    """Rows: hinge exactly at delta; ties; padded slots that would win; no positive (neg just
    above delta); no negative; an empty candidate set."""
    ce = np.array(
        [
            [2.0, 1.5, 3.0, 3.5],
            [1.25, 1.25, 2.5, 2.5],
            [0.5, 0.01, 2.999, 0.0],
            [0.1, 0.2, 3.001, 4.0],
            [0.7, 0.3, 0.0, 0.0],
            [0.0, 0.0, 0.0, 0.0],
        ],
        np.float32,
    )
    valid = np.array(
        [[1, 1, 1, 1], [1, 1, 1, 1], [1, 0, 1, 0], [0, 0, 1, 1], [1, 1, 0, 0], [0, 0, 0, 0]], bool
    )
    scores = np.array(
        [
            [0.5] * 4,
            [0.9, 0.2, 0.1, 0.7],
            [0.3, 0.8, 0.6, 0.4],
            [0.5] * 4,
            [0.6, 0.25, 0, 0],
            [0] * 4,
        ],
        np.float32,
    )
    return ce, valid, np.broadcast_to(IS_POS, ce.shape), scores


@pytest.mark.parametrize("use_scores", [False, True])
@pytest.mark.parametrize("w_pos, w_neg, delta", [(1.0, 1.0, 3.0), (0.5, 2.0, 3.0), (1.0, 1.0, 2.6)])
def test_contrastive_terms_match_the_loop(use_scores, w_pos, w_neg, delta):
    ce, valid, is_pos, scores = _handmade()
    scores = scores if use_scores else None
    pos, neg, metrics = contrastive_terms(
        jnp.asarray(ce), valid, is_pos, scores, w_pos=w_pos, w_neg=w_neg, delta=delta
    )
    e_pos, e_neg, no_pos, no_neg, active = _reference_terms(
        ce.astype(np.float64), valid, is_pos, scores, w_pos, w_neg, delta
    )
    np.testing.assert_allclose(float(pos), e_pos, rtol=1e-6)
    np.testing.assert_allclose(float(neg), e_neg, rtol=1e-5, atol=1e-7)
    assert float(metrics["rows_without_positive"]) == no_pos == 2
    assert float(metrics["rows_without_negative"]) == no_neg == 2
    np.testing.assert_allclose(float(metrics["hinge_active_fraction"]), active, rtol=1e-6)
    assert all(np.isfinite(float(v)) for v in metrics.values())


def test_hinge_is_zero_at_delta_and_positive_just_below():
    is_pos = np.array([[True, False]] * 3)
    valid = np.ones((3, 2), bool)
    ce = jnp.asarray([[1.0, 3.0], [1.0, 2.75], [1.0, 3.25]], jnp.float32)
    _, neg, metrics = contrastive_terms(ce, valid, is_pos, delta=3.0)
    np.testing.assert_allclose(float(neg), 0.25 / 3, rtol=1e-6)
    np.testing.assert_allclose(float(metrics["hinge_active_fraction"]), 1 / 3, rtol=1e-6)
    _, at_delta, _ = contrastive_terms(ce[:1], valid[:1], is_pos[:1], delta=3.0)
    assert float(at_delta) == 0.0


def test_gradient_reaches_only_the_winning_candidates():
    ce, valid, is_pos, scores = _handmade()
    grad = jax.grad(lambda c: sum(contrastive_terms(c, valid, is_pos, scores)[:2]))(jnp.asarray(ce))
    rows = ce.shape[0]
    expected = np.zeros_like(ce)
    expected[0, 1] = 0.5 / rows  # row 0's hinge sits exactly at delta: no negative gradient
    expected[1, 0], expected[1, 2] = 0.9 / rows, -0.9 / rows  # ties: the first slot only
    expected[2, 0], expected[2, 2] = 0.3 / rows, -0.4 / rows  # padded slots never win
    expected[4, 1] = 0.25 / rows
    np.testing.assert_allclose(np.asarray(grad), expected, rtol=1e-6, atol=1e-8)
    score_grad = jax.grad(lambda s: sum(contrastive_terms(jnp.asarray(ce), valid, is_pos, s)[:2]))
    assert not np.any(np.asarray(score_grad(jnp.asarray(scores))))


def _qcrd_batch(rng, b=3, k=4, lin=5, lc=6, lt=4):
    """Row 0 full; row 1 a padded positive slot and an empty-but-masked negative; row 2 without
    positives."""
    lengths = rng.integers(2, lc + 1, (b, k))
    mask = np.array([[1, 1, 1, 1], [1, 0, 1, 1], [0, 0, 1, 1]], np.int32)
    lengths = lengths * mask
    lengths[1, 3] = 0  # masked 1 but no tokens: an empty candidate
    targets = rng.integers(3, 256, (b, k, lc)) * (np.arange(lc) < lengths[..., None])
    label_len = rng.integers(1, lt + 1, (b, 1))
    label_targets = rng.integers(3, 256, (b, lt)) * (np.arange(lt) < label_len)
    label = {
        "encoder_input_tokens": rng.integers(3, 256, (b, lin)).astype(np.int32),
        "decoder_target_tokens": label_targets.astype(np.int32),
        "decoder_input_tokens": np.pad(label_targets[:, :-1], ((0, 0), (1, 0))).astype(np.int32),
        "decoder_loss_weights": (label_targets > 0).astype(np.float32),
    }
    q = rng.integers(3, 256, (b, lin)) * (np.arange(lin) < rng.integers(2, lin + 1, (b, 1)))
    candidates = {
        "encoder_input_tokens": q.astype(np.int32),
        "candidate_target_tokens": targets.astype(np.int32),
        "candidate_input_tokens": np.pad(targets[..., :-1], ((0, 0), (0, 0), (1, 0))).astype(
            np.int32
        ),
        "candidate_loss_weights": (targets > 0).astype(np.float32),
        "candidate_mask": mask,
        "candidate_is_positive": np.broadcast_to(IS_POS[:k].astype(np.int32), (b, k)).copy(),
        "candidate_scores": rng.uniform(0, 1, (b, k)).astype(np.float32),
    }
    return merge_qcrd_batches(label, candidates)


def _token_means(logits, targets, weights, z_loss):
    """Per-row token-mean CE (float64 log-softmax, z-loss added), written out token by token."""
    logits = np.asarray(logits, np.float64)
    out = np.zeros(logits.shape[0])
    for r in range(logits.shape[0]):
        total = count = 0.0
        for i in range(logits.shape[1]):
            if weights[r, i] == 0:
                continue
            row = logits[r, i]
            log_z = np.log(np.sum(np.exp(row - row.max()))) + row.max()
            total += weights[r, i] * (log_z - row[targets[r, i]] + z_loss * log_z**2)
            count += weights[r, i]
        out[r] = total / max(count, 1e-8)
    return out, logits.shape


def _reference_ce(model, params, batch, z_loss=1e-4):
    """(L_pred, candidate CE [B, K], valid [B, K]): L_pred over the label tokens, and every
    (question, candidate) pair run as its own full forward (no shared encoding)."""
    forward = jax.jit(lambda x, y: model.apply({"params": params}, x, y))
    logits = forward(batch["encoder_input_tokens"], batch["decoder_input_tokens"])
    w = batch["decoder_loss_weights"]
    per_row, _ = _token_means(logits, batch["decoder_target_tokens"], w, z_loss)
    tokens = w.sum(axis=1)
    pred = float(np.sum(per_row * tokens) / tokens.sum())
    b, k, length = batch["candidate_target_tokens"].shape
    cand_logits = forward(
        np.repeat(batch["candidate_encoder_input_tokens"], k, axis=0),
        batch["candidate_input_tokens"].reshape(b * k, length),
    )
    cw = batch["candidate_loss_weights"].reshape(b * k, length)
    ce, _ = _token_means(
        cand_logits, batch["candidate_target_tokens"].reshape(b * k, length), cw, z_loss
    )
    valid = (batch["candidate_mask"] > 0) & (cw.sum(axis=1).reshape(b, k) > 0)
    return pred, ce.reshape(b, k), valid


def _tiny_t5(**fields):
    return dataclasses.replace(get_preset("t5-tiny"), **fields)


@pytest.fixture(scope="module")
def student():
    """A one-layer student, its batch, the reference (L_pred, CE, valid) and a jitted loss at a
    delta between the candidates' CEs (some hinges active, some not)."""
    batch = _qcrd_batch(np.random.default_rng(0))
    model = build_model(_tiny_t5(num_encoder_layers=1, num_decoder_layers=1))
    params = random_params(
        model,
        encoder_input_tokens=batch["encoder_input_tokens"],
        decoder_input_tokens=batch["decoder_input_tokens"],
    )
    reference = _reference_ce(model, params, batch)
    delta = float(np.median(reference[1][reference[2]]))
    loss = jax.jit(lambda p, b: qcrd_loss(model, p, b, None, delta=delta))
    return model, params, batch, reference, delta, loss


def test_qcrd_loss_matches_the_reference(student):
    _, params, batch, (pred, ce, valid), delta, loss_fn = student
    scores, is_pos = batch["candidate_scores"], batch["candidate_is_positive"] > 0
    pos, neg, no_pos, no_neg, active = _reference_terms(ce, valid, is_pos, scores, 1, 1, delta)
    loss, metrics = loss_fn(params, batch)
    np.testing.assert_allclose(float(loss), pred + pos + neg, rtol=1e-5)
    np.testing.assert_allclose(float(metrics["pred_loss"]), pred, rtol=1e-5)
    assert 0 < active < 1 and float(metrics["hinge_active_fraction"]) == pytest.approx(active)
    assert float(metrics["rows_without_positive"]) == no_pos == 1
    assert float(metrics["rows_without_negative"]) == no_neg == 0
    assert float(metrics["empty_candidates"]) == 1
    assert float(metrics["denominator"]) == 3


def test_no_gradient_into_the_discriminator(student):
    model, params, batch, _, delta, loss_fn = student
    disc = Discriminator(_tiny_t5(num_encoder_layers=1), hidden_dim=16)
    question, cands = batch["candidate_encoder_input_tokens"], batch["candidate_target_tokens"]
    d_params = random_params(disc, question_tokens=question, candidate_tokens=cands)

    def judged(p, d):
        constants = {"discriminator": d}
        return qcrd_loss(
            model, p, batch, None, delta=delta, constants=constants, discriminator=disc
        )[0]

    # (the batch's own candidate_scores get no gradient either: test_gradient_reaches_only...)
    value, (g_params, g_disc) = jax.jit(jax.value_and_grad(judged, argnums=(0, 1)))(
        params, d_params
    )
    assert all(not np.any(np.asarray(leaf)) for leaf in jax.tree.leaves(g_disc))
    assert any(np.any(np.asarray(leaf)) for leaf in jax.tree.leaves(g_params))
    # D's scores are what weights the loss (else the zero gradients would say nothing)
    d_scores = np.asarray(jax.jit(disc.apply)({"params": d_params}, question, cands))
    given = loss_fn(params, {**batch, "candidate_scores": d_scores})[0]
    np.testing.assert_allclose(float(value), float(given), rtol=1e-6)
    other = {**batch, "candidate_scores": 1.0 - batch["candidate_scores"]}
    assert float(loss_fn(params, other)[0]) != pytest.approx(float(loss_fn(params, batch)[0]))


def test_merge_and_split_round_trip_and_refuse_bad_batches():
    batch = _qcrd_batch(np.random.default_rng(1))
    label, candidates = split_qcrd_batch(batch)
    assert set(label) == {
        "encoder_input_tokens",
        "decoder_input_tokens",
        "decoder_target_tokens",
        "decoder_loss_weights",
    }
    assert merge_qcrd_batches(label, candidates).keys() == batch.keys()
    with pytest.raises(ValueError, match="one batch size"):
        merge_qcrd_batches({k: v[:2] for k, v in label.items()}, candidates)
    with pytest.raises(KeyError, match="candidate_mask"):
        split_qcrd_batch({k: v for k, v in batch.items() if k != "candidate_mask"})


@pytest.fixture(scope="module")
def judge():
    rng = np.random.default_rng(2)
    batch = _qcrd_batch(rng)
    _, candidates = split_qcrd_batch(batch)
    disc = Discriminator(_tiny_t5(num_encoder_layers=1), hidden_dim=16)
    params = random_params(
        disc,
        question_tokens=candidates["encoder_input_tokens"],
        candidate_tokens=candidates["candidate_target_tokens"],
    )
    apply = jax.jit(
        lambda q, c, logits=False: disc.apply({"params": params}, q, c, logits=logits),
        static_argnames="logits",
    )
    return disc, params, candidates, apply


def test_discriminator_scores_ignore_padding(judge):
    _, _, candidates, apply = judge
    q, c = candidates["encoder_input_tokens"], candidates["candidate_target_tokens"]
    scores = np.asarray(apply(q, c))
    assert scores.shape == c.shape[:2]
    assert np.all((scores >= 0) & (scores <= 1))
    padded = apply(np.pad(q, ((0, 0), (0, 3))), np.pad(c, ((0, 0), (0, 0), (0, 4))))
    np.testing.assert_allclose(np.asarray(padded), scores, rtol=1e-5, atol=1e-6)
    logits = np.asarray(apply(q, c, logits=True))
    changed = c.copy()
    changed[0, 0, 0] = 7 if changed[0, 0, 0] != 7 else 8
    moved = np.asarray(apply(q, changed, logits=True))
    assert abs(moved[0, 0] - logits[0, 0]) > 1e-6  # a valid token counts
    np.testing.assert_allclose(moved[1:], logits[1:], rtol=1e-6, atol=1e-6)


def test_discriminator_loss_matches_the_reference(judge):
    disc, params, candidates, apply = judge
    loss_fn = jax.value_and_grad(
        lambda p: discriminator_loss(disc, p, candidates, None), has_aux=True
    )
    (loss, metrics), grads = jax.jit(loss_fn)(params)
    q, c = candidates["encoder_input_tokens"], candidates["candidate_target_tokens"]
    logits = np.asarray(apply(q, c, logits=True), np.float64)
    total, count, correct = 0.0, 0, 0
    for b in range(logits.shape[0]):
        for k in range(logits.shape[1]):
            empty = not np.any(candidates["candidate_target_tokens"][b, k])
            if candidates["candidate_mask"][b, k] == 0 or empty:
                continue
            p = 1.0 / (1.0 + np.exp(-logits[b, k]))
            y = candidates["candidate_is_positive"][b, k]
            total += -np.log(p) if y else -np.log(1.0 - p)
            correct += (p > 0.5) == bool(y)
            count += 1
    assert count == 8 and float(metrics["denominator"]) == count
    np.testing.assert_allclose(float(loss), total / count, rtol=1e-5)
    np.testing.assert_allclose(float(metrics["accuracy"]), correct / count, rtol=1e-6)
    assert any(np.any(np.asarray(leaf)) for leaf in jax.tree.leaves(grads))


def _reference_decoder_ce(model, params, batch, z_loss=1e-4):
    """(L_pred, candidate CE [B, K]) of a decoder-only student: each (question, candidate)
    pair built as its own Python list `question's tokens + candidate's tokens` and run alone."""
    forward = jax.jit(lambda x: model.apply({"params": params}, x))
    logits = forward(batch["decoder_input_tokens"])
    w = batch["decoder_loss_weights"]
    per_row, _ = _token_means(logits, batch["decoder_target_tokens"], w, z_loss)
    pred = float(np.sum(per_row * w.sum(axis=1)) / w.sum())
    b, k, _ = batch["candidate_target_tokens"].shape
    ce = np.zeros((b, k))
    for r in range(b):
        question = [int(t) for t in batch["candidate_encoder_input_tokens"][r] if t > 0]
        for j in range(k):
            cand = [int(t) for t in batch["candidate_target_tokens"][r, j] if t > 0]
            if not cand:
                continue
            row = np.array([question + cand])
            out = forward(np.pad(row[:, :-1], ((0, 0), (1, 0))))
            weights = np.array([[0.0] * len(question) + [1.0] * len(cand)])
            ce[r, j] = _token_means(out, row, weights, z_loss)[0][0]
    return pred, ce


def test_decoder_only_student_matches_the_reference():
    rng = np.random.default_rng(3)
    enc_batch = _qcrd_batch(rng)
    b, lt = enc_batch["decoder_target_tokens"].shape
    prompt = rng.integers(3, 256, (b, 3))  # a prefix-LM label row: prompt (no loss), label
    targets = np.concatenate([prompt, enc_batch["decoder_target_tokens"]], axis=1)
    batch = {k: v for k, v in enc_batch.items() if k != "encoder_input_tokens"}
    batch.update(
        decoder_target_tokens=targets.astype(np.int32),
        decoder_input_tokens=np.pad(targets[:, :-1], ((0, 0), (1, 0))).astype(np.int32),
        decoder_loss_weights=np.concatenate(
            [np.zeros_like(prompt), enc_batch["decoder_loss_weights"]], axis=1
        ).astype(np.float32),
    )
    model = build_model(dataclasses.replace(get_preset("decoder-tiny"), num_layers=1))
    params = random_params(model, decoder_input_tokens=batch["decoder_input_tokens"])
    pred, ce = _reference_decoder_ce(model, params, batch)
    valid = (batch["candidate_mask"] > 0) & (batch["candidate_loss_weights"].sum(-1) > 0)
    delta = float(np.median(ce[valid]))
    scores, is_pos = batch["candidate_scores"], batch["candidate_is_positive"] > 0
    pos, neg, *_ = _reference_terms(ce, valid, is_pos, scores, 1, 1, delta)
    loss, metrics = jax.jit(lambda p, x: qcrd_loss(model, p, x, None, delta=delta))(params, batch)
    np.testing.assert_allclose(float(metrics["pred_loss"]), pred, rtol=1e-5)
    np.testing.assert_allclose(float(loss), pred + pos + neg, rtol=1e-5)
    assert 0 < float(metrics["hinge_active_fraction"]) < 1
    got, _ = jax.jit(lambda p, c: candidate_cross_entropy(model, p, c, None))(
        params, split_qcrd_batch(batch)[1]
    )
    np.testing.assert_allclose(np.asarray(got)[valid], ce[valid], rtol=1e-5)
