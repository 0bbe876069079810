"""QCRD (Wang et al. 2024, arXiv:2405.13014): step-by-step with a contrastive rationale term.

    L = L_pred + w_pos * s(p*) * CE(p*) + w_neg * (1 - s(n*)) * max(0, delta - CE(n*)),
    p* = argmin_{r in S+} CE(r),  n* = argmin_{r in S-} CE(r),  delta = 3,

for an encoder-decoder or decoder-only student. No reference code exists; the choices below
are ours.

- L_pred: the token-mean CE of the `predict: x -> y` label rows (as `token_loss`).
- CE(r): the token mean of candidate r's per-token CE (z-loss included) over its weighted
  target tokens (`candidate_loss_weights`).
- A candidate is valid when `candidate_mask` is 1 and it has a weighted token. Invalid ones
  enter each min as +inf, so padding never wins. A row without a valid positive (negative)
  has a positive (negative) term of 0, and is counted: `rows_without_positive`
  (`rows_without_negative`); slots marked valid but without tokens are counted as
  `empty_candidates`. Ties in a min go to the lowest slot index, and only that
  candidate gets the gradient.
- Discriminator weights (the paper says only that D's scores weight the candidates): the
  min is taken over the *unweighted* CE, and the winner's own score scales its term, s for
  the positive winner, 1 - s for the negative one. (A weighted min would favour positives
  that D rejects, since s * CE -> 0 as s -> 0.) Without scores, every weight is 1. Scores
  are `stop_gradient`ed inputs: the student loss gives D no gradient.
- Each contrastive term is a mean over *all* B question rows (a row without a positive
  adds 0), a plain sum of per-row losses, so with `denominator` B it accumulates over
  microbatches exactly; L_pred, a token mean, is per microbatch as in `step_by_step_loss`.

Batch (one flat dict whose every value has the leading B axis, as `Trainer` splits
microbatches): the label part under its usual names (`encoder_input_tokens`,
`decoder_input_tokens`, `decoder_target_tokens`, `decoder_loss_weights`, optional packing
features) from the `{name}_label` task through `EncDecConverter` (decoder-only:
`DecoderConverter`, prompt then label); the candidate part from the
`{name}_contrastive` task through `CandidatesConverter`, its `encoder_input_tokens` renamed
`candidate_encoder_input_tokens` (`merge_qcrd_batches`). The two streams are separate
seqio pipelines; the trainer's data stream draws one batch from each, with the same B, and
merges them. The label rows need not be the candidate rows' questions (the terms are means
over independent rows). The candidate questions are what the contrastive task writes (today
the bare input; step-by-step's `explain: ` prefix there would be a data-side change).

Hooks left for the rest of QCRD (issue 22):
- Scores: `qcrd_loss(discriminator=D)` applies D to `constants["discriminator"]` inside the
  step (today's `Trainer(constants=...)`: frozen D params; an online D would move them into
  the train state with their own optimizer); or a batch may carry precomputed
  `candidate_scores` [B, K] (from a D run outside). D's own training is
  `objectives.discriminator.discriminator_loss` on candidate batches.
- Self-adversarial negatives: sampled from the lagged parameter ring, they are appended to
  the candidate part as extra slots with `candidate_is_positive` 0 and `candidate_mask` 1;
  `contrastive_terms` takes any K.
- `candidate_cross_entropy` is the one place that runs the student on candidates; a
  decoder-only student gets `prompt ++ candidate` rows (`prompt_rows.prompt_continuation_rows`).
"""

from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from t5x_rationale.objectives.cross_entropy import (
    token_accuracy,
    token_cross_entropy,
    weighted_mean,
)
from t5x_rationale.objectives.lm import forward_logits
from t5x_rationale.objectives.prompt_rows import prompt_continuation_rows

CANDIDATE_ENCODER_KEY = "candidate_encoder_input_tokens"
# what `CandidatesConverter` makes (its truncation flags are popped by the data stream);
# `candidate_scores` [B, K] is optional
CANDIDATE_KEYS = (
    CANDIDATE_ENCODER_KEY,
    "candidate_input_tokens",
    "candidate_target_tokens",
    "candidate_loss_weights",
    "candidate_mask",
    "candidate_is_positive",
)


def merge_qcrd_batches(label_batch: dict, candidate_batch: dict) -> dict:
    """One QCRD batch from a label batch and a `CandidatesConverter` batch of the same size."""
    sizes = {v.shape[0] for v in (*label_batch.values(), *candidate_batch.values())}
    if len(sizes) != 1:
        raise ValueError(f"label and candidate batches need one batch size, got {sorted(sizes)}")
    clash = sorted(k for k in label_batch if k.startswith("candidate_"))
    if clash:
        raise ValueError(f"label batch has candidate feature names {clash}")
    merged = dict(label_batch)
    for key, value in candidate_batch.items():
        merged[CANDIDATE_ENCODER_KEY if key == "encoder_input_tokens" else key] = value
    return merged


def split_qcrd_batch(batch: dict) -> tuple[dict, dict]:
    """(label part, candidate part) of a merged batch; the candidate part gets back its
    `encoder_input_tokens`."""
    missing = [k for k in CANDIDATE_KEYS if k not in batch]
    if missing or "decoder_target_tokens" not in batch:
        raise KeyError(
            f"a QCRD batch needs label features and {list(CANDIDATE_KEYS)} (see "
            "merge_qcrd_batches); "
            f"missing {missing or ['decoder_target_tokens']}, got {sorted(batch)}"
        )
    label = {k: v for k, v in batch.items() if not k.startswith("candidate_")}
    candidates = {k: v for k, v in batch.items() if k.startswith("candidate_")}
    candidates["encoder_input_tokens"] = candidates.pop(CANDIDATE_ENCODER_KEY)
    return label, candidates


def candidate_cross_entropy(
    model: nn.Module,
    params: Any,
    candidates: dict,
    rng: Optional[jax.Array],
    *,
    z_loss: float = 1e-4,
    label_smoothing: float = 0.0,
) -> tuple[jax.Array, jax.Array]:
    """(CE [B, K], token count [B, K]): each candidate's token-mean CE under the student.

    Encoder-decoder: the question is encoded once per row and its encoding repeated for the
    K candidates. Decoder-only: each (question, candidate) pair is one row, the question
    then the candidate (`prompt_continuation_rows`), with loss on the candidate.
    """
    targets = candidates["candidate_target_tokens"]
    batch, num, length = targets.shape
    weights = candidates["candidate_loss_weights"].astype(jnp.float32)
    rngs = lambda i: {} if rng is None else {"dropout": jax.random.fold_in(rng, i)}  # noqa: E731
    variables = {"params": params}
    encoder_tokens = candidates["encoder_input_tokens"]
    if model.config.architecture != "encoder_decoder":
        inputs, targets, weights = prompt_continuation_rows(encoder_tokens, targets, weights)
        logits = model.apply(variables, inputs, deterministic=rng is None, rngs=rngs(0))
        logits = logits.reshape(batch, num, inputs.shape[-1], -1)
    else:
        encoded = model.apply(
            variables, encoder_tokens, deterministic=rng is None, rngs=rngs(0), method="encode"
        )
        logits = model.apply(
            variables,
            jnp.repeat(encoded, num, axis=0),
            jnp.repeat(encoder_tokens, num, axis=0),
            candidates["candidate_input_tokens"].reshape(batch * num, length),
            deterministic=rng is None,
            rngs=rngs(1),
            method="decode",
        ).reshape(batch, num, length, -1)
    per_token, _ = token_cross_entropy(
        logits, targets, z_loss=z_loss, label_smoothing=label_smoothing
    )
    tokens = jnp.sum(weights, axis=-1)
    return jnp.sum(per_token * weights, axis=-1) / jnp.maximum(tokens, 1e-8), tokens


def _masked_argmin(values: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(min value [B], argmin index [B]) over the last axis among `mask`; ties -> first."""
    masked = jnp.where(mask, values, jnp.inf)
    index = jnp.argmin(masked, axis=-1)
    return jnp.take_along_axis(masked, index[:, None], axis=-1)[:, 0], index


def contrastive_terms(
    ce: jax.Array,
    valid: jax.Array,
    is_positive: jax.Array,
    scores: Optional[jax.Array] = None,
    *,
    w_pos: float = 1.0,
    w_neg: float = 1.0,
    delta: float = 3.0,
) -> tuple[jax.Array, jax.Array, dict]:
    """(positive term, negative term, metrics): the batch means of the two contrastive terms.

    Args:
      ce: [B, K] candidate CE.
      valid: [B, K] bool, real candidates.
      is_positive: [B, K] bool.
      scores: optional [B, K] discriminator scores in [0, 1] (gradient stopped here).
    """
    valid = valid.astype(bool)
    pos_mask, neg_mask = valid & is_positive.astype(bool), valid & ~is_positive.astype(bool)
    has_pos, has_neg = jnp.any(pos_mask, axis=-1), jnp.any(neg_mask, axis=-1)
    pos_ce, pos_index = _masked_argmin(ce, pos_mask)
    neg_ce, neg_index = _masked_argmin(ce, neg_mask)
    if scores is None:
        pos_w = neg_w = jnp.ones(ce.shape[:1], jnp.float32)
    else:
        scores = jax.lax.stop_gradient(scores.astype(jnp.float32))
        pos_w = jnp.take_along_axis(scores, pos_index[:, None], axis=-1)[:, 0]
        neg_w = 1.0 - jnp.take_along_axis(scores, neg_index[:, None], axis=-1)[:, 0]
    margin = delta - neg_ce
    pos_rows = jnp.where(has_pos, w_pos * pos_w * jnp.where(has_pos, pos_ce, 0.0), 0.0)
    # relu's derivative at 0 is 0: a negative exactly at delta gets no gradient
    hinge = jnp.where(has_neg, jax.nn.relu(jnp.where(has_neg, margin, 0.0)), 0.0)
    neg_rows = w_neg * neg_w * hinge
    rows = jnp.asarray(ce.shape[0], jnp.float32)
    n_pos, n_neg = jnp.sum(has_pos), jnp.sum(has_neg)
    metrics = {
        "positive_term": jnp.sum(pos_rows) / rows,
        "negative_term": jnp.sum(neg_rows) / rows,
        "positive_ce": jnp.sum(jnp.where(has_pos, pos_ce, 0.0)) / jnp.maximum(n_pos, 1),
        "negative_ce": jnp.sum(jnp.where(has_neg, neg_ce, 0.0)) / jnp.maximum(n_neg, 1),
        "rows_without_positive": rows - n_pos,
        "rows_without_negative": rows - n_neg,
        "hinge_active_fraction": jnp.sum(has_neg & (margin > 0)) / jnp.maximum(n_neg, 1),
        "positive_weight": jnp.sum(jnp.where(has_pos, pos_w, 0.0)) / jnp.maximum(n_pos, 1),
        "negative_weight": jnp.sum(jnp.where(has_neg, neg_w, 0.0)) / jnp.maximum(n_neg, 1),
    }
    return metrics["positive_term"], metrics["negative_term"], metrics


def candidate_scores(
    candidates: dict, constants: Optional[dict], discriminator: Optional[nn.Module]
) -> Optional[jax.Array]:
    """D's [B, K] scores with no gradient: from `discriminator` applied to
    `constants["discriminator"]`, else the batch's `candidate_scores`, else None."""
    if discriminator is not None:
        if not constants or "discriminator" not in constants:
            raise KeyError("qcrd_loss(discriminator=...) needs constants['discriminator']")
        scores = discriminator.apply(
            {"params": constants["discriminator"]},
            candidates["encoder_input_tokens"],
            candidates["candidate_target_tokens"],
            candidates["candidate_loss_weights"],
        )
    else:
        scores = candidates.get("candidate_scores")
    return None if scores is None else jax.lax.stop_gradient(scores)


def qcrd_loss(
    model: nn.Module,
    params: Any,
    batch: dict,
    rng: Optional[jax.Array],
    *,
    w_pos: float = 1.0,
    w_neg: float = 1.0,
    delta: float = 3.0,
    z_loss: float = 1e-4,
    label_smoothing: float = 0.0,
    constants: Optional[dict] = None,
    discriminator: Optional[nn.Module] = None,
) -> tuple[jax.Array, dict]:
    """L_pred plus the QCRD contrastive terms (see the module docstring) on a merged batch."""
    if delta <= 0 or w_pos < 0 or w_neg < 0:
        raise ValueError(f"need delta > 0 and w_pos, w_neg >= 0; got {delta}, {w_pos}, {w_neg}")
    label, candidates = split_qcrd_batch(batch)
    pred_rng, cand_rng = (None, None) if rng is None else tuple(jax.random.split(rng))
    logits = forward_logits(model, params, label, pred_rng)
    targets = label["decoder_target_tokens"]
    weights = label.get("decoder_loss_weights", (targets > 0).astype(jnp.float32))
    per_token, _ = token_cross_entropy(
        logits, targets, z_loss=z_loss, label_smoothing=label_smoothing
    )
    pred_loss, label_tokens = weighted_mean(per_token, weights)
    ce, tokens = candidate_cross_entropy(
        model, params, candidates, cand_rng, z_loss=z_loss, label_smoothing=label_smoothing
    )
    valid = (candidates["candidate_mask"] > 0) & (tokens > 0)
    scores = candidate_scores(candidates, constants, discriminator)
    pos_term, neg_term, metrics = contrastive_terms(
        ce,
        valid,
        candidates["candidate_is_positive"] > 0,
        scores,
        w_pos=w_pos,
        w_neg=w_neg,
        delta=delta,
    )
    loss = pred_loss + pos_term + neg_term
    metrics.update(
        loss=loss,
        pred_loss=pred_loss,
        label_accuracy=weighted_mean(token_accuracy(logits, targets), weights)[0],
        label_tokens=label_tokens,
        empty_candidates=jnp.sum((candidates["candidate_mask"] > 0) & (tokens == 0)),
        denominator=jnp.asarray(targets.shape[0], jnp.float32),
    )
    return loss, metrics
