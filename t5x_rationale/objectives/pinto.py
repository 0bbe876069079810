"""PINTO (Wang et al. 2023, arXiv 2211.01562): multiple choice with counterfactual rationales.

The student reads `question + choices + rationale` (the context) and scores each choice c by
its length-normalised log-likelihood (the mean log-probability of c's target tokens, EOS
included): an encoder-decoder encodes the context once per row and decodes each choice; a
decoder-only student reads `context ++ c` as one sequence per choice
(`prompt_rows.prompt_continuation_rows`) and scores the tokens after the context. A softmax
over a row's real choices gives its prediction:

    L_task = CE(softmax(scores), label)
    L_cf   = CE_smoothed(softmax(scores of the perturbed copy), label),   smoothing 0.1
    L      = L_task + cf_weight * L_cf,                                   cf_weight = 1.0

The perturbed copy is the same row with its rationale perturbed (only the tokens
`rationale_mask` marks): with probability 0.5 the whole rationale becomes `mask_id`, else
30% of its tokens (rounded to the nearest count) become random ids drawn uniformly from
`[random_id_low, random_id_high)`. The draws come from the loss's rng inside the step, so a
step's perturbation depends only on the step rng, never on the data pipeline.

Choices made here (docs/methods.md, PINTO):

- `mask_id` defaults to 2, the shipped tokenizer's `<unk>`: a visible token with no content,
  so the masked copy keeps the rationale's length and positions but none of its words. The
  pad id 0 would instead drop the positions from the encoder's attention (the rationale
  deleted); pass `mask_id=0` for that (a decoder-only student reads id 0 as a token).
- Random ids skip the special ids below `random_id_low` (5: pad, EOS, unk and the two thought
  tokens); `random_id_high` None is the model's vocabulary size. A drawn id may equal the
  token it replaces (about 1 in 2000 with the shipped vocabulary).
- Label smoothing puts `1 - eps` on the label and `eps / K` on each of the row's K real
  choices, the label included (as PyTorch's `CrossEntropyLoss(label_smoothing=eps)`); the
  loss is the plain cross-entropy against that distribution (no entropy subtracted).
- Padded choice slots (`choice_mask` 0) get a score of -1e9: they never win and take no
  probability. A row whose label points at no real choice is left out of every mean and
  counted in `skipped_rows`.
- Without an rng (evaluation) there is no dropout and the perturbation uses the fixed key 0.
- A decoder-only student recomputes the context once per choice (C sequences per row); the
  context ends at its last non-zero token: the EOS `ChoicesConverter` appends.
"""

from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from t5x_rationale.objectives.cross_entropy import token_cross_entropy
from t5x_rationale.objectives.prompt_rows import prompt_continuation_rows

PADDED_CHOICE_SCORE = -1e9
BATCH_FEATURES = (
    "encoder_input_tokens",
    "rationale_mask",
    "choice_input_tokens",
    "choice_target_tokens",
    "choice_loss_weights",
    "choice_mask",
    "choice_label",
)


def perturb_rationale(
    rng: jax.Array,
    tokens: jax.Array,
    rationale_mask: jax.Array,
    *,
    mask_probability: float = 0.5,
    replace_fraction: float = 0.3,
    mask_id: int = 2,
    random_id_low: int = 5,
    random_id_high: int,
) -> tuple[jax.Array, jax.Array]:
    """The rows of `tokens` [B, L] with their rationale tokens perturbed.

    Each row independently: with probability `mask_probability` every rationale token becomes
    `mask_id`; otherwise `round(replace_fraction * n)` of its n rationale tokens, chosen
    uniformly without replacement, become ids drawn uniformly from
    `[random_id_low, random_id_high)`. Tokens outside `rationale_mask` never change.

    Returns:
      (perturbed tokens [B, L], rows masked whole [B] bool).
    """
    row_key, pick_key, id_key = jax.random.split(rng, 3)
    in_rationale = rationale_mask > 0
    masked = jax.random.uniform(row_key, tokens.shape[:1]) < mask_probability
    # rank of each rationale token under a random order; the first k of a row are replaced
    keys = jnp.where(in_rationale, jax.random.uniform(pick_key, tokens.shape), 2.0)
    rank = jnp.argsort(jnp.argsort(keys, axis=-1), axis=-1)
    count = jnp.sum(in_rationale, axis=-1, keepdims=True)
    k = jnp.floor(replace_fraction * count + 0.5).astype(rank.dtype)
    replaced = in_rationale & (rank < k)
    random_ids = jax.random.randint(id_key, tokens.shape, random_id_low, random_id_high)
    out = jnp.where(replaced, random_ids.astype(tokens.dtype), tokens)
    out = jnp.where(in_rationale & masked[:, None], jnp.asarray(mask_id, tokens.dtype), out)
    return out, masked


def choice_scores(model: nn.Module, params: Any, batch: dict, context: jax.Array, rng) -> jax.Array:
    """[B, C] float32: each choice's mean target-token log-probability given `context`
    [B, Le] (padded slots at `PADDED_CHOICE_SCORE`)."""
    if model.config.architecture == "decoder":
        log_likelihood, weights = _decoder_choice_log_likelihood(model, params, batch, context, rng)
    else:
        log_likelihood, weights = _encoder_decoder_log_likelihood(
            model, params, batch, context, rng
        )
    scores = log_likelihood / jnp.maximum(jnp.sum(weights, axis=-1), 1.0)
    return jnp.where(real_choices(batch), scores, PADDED_CHOICE_SCORE)


def _encoder_decoder_log_likelihood(model, params, batch, encoder_tokens, rng):
    """([B, C] summed log-probabilities of the choices' weighted tokens, weights [B, C, Lc]);
    the encoder runs once per row."""
    rngs = {} if rng is None else {"dropout": rng}
    deterministic = rng is None
    targets = batch["choice_target_tokens"]
    rows, num_choices, length = targets.shape
    variables = {"params": params}
    encoded = model.apply(
        variables, encoder_tokens, deterministic=deterministic, rngs=rngs, method=model.encode
    )
    logits = model.apply(
        variables,
        jnp.repeat(encoded, num_choices, axis=0),
        jnp.repeat(encoder_tokens, num_choices, axis=0),
        batch["choice_input_tokens"].reshape(rows * num_choices, length),
        deterministic=deterministic,
        rngs=rngs,
        method=model.decode,
    )
    nll, _ = token_cross_entropy(logits, targets.reshape(rows * num_choices, length))
    weights = batch["choice_loss_weights"].astype(jnp.float32)
    return -jnp.sum(nll.reshape(targets.shape) * weights, axis=-1), weights


def _decoder_choice_log_likelihood(model, params, batch, context, rng):
    """([B, C] summed log-probabilities of the choices' weighted tokens after the context,
    weights [B, C, W]) from one causal sequence per (row, choice)."""
    weights = batch["choice_loss_weights"].astype(jnp.float32)
    inputs, targets, weights = prompt_continuation_rows(
        context, batch["choice_target_tokens"], weights
    )
    rngs = {} if rng is None else {"dropout": rng}
    logits = model.apply({"params": params}, inputs, deterministic=rng is None, rngs=rngs)
    nll, _ = token_cross_entropy(logits, targets.reshape(inputs.shape))
    return -jnp.sum(nll.reshape(targets.shape) * weights, axis=-1), weights


def real_choices(batch: dict) -> jax.Array:
    """[B, C] bool: the slots that hold a choice (`choice_mask` 1 and at least one token)."""
    weights = batch["choice_loss_weights"]
    return (batch["choice_mask"] > 0) & (jnp.sum(weights, axis=-1) > 0)


def counted_rows(labels: jax.Array, real: jax.Array) -> jax.Array:
    """[B] bool: the rows whose label points at a real choice (the others are skipped)."""
    in_range = (labels >= 0) & (labels < real.shape[-1])
    label_real = jnp.take_along_axis(real, jnp.where(in_range, labels, 0)[:, None], axis=-1)
    return label_real[:, 0] & in_range


def choice_predictions(model: nn.Module, params: Any, batch: dict) -> tuple[jax.Array, jax.Array]:
    """(predicted choice [B] int32, counted [B] bool) of an evaluation batch: the argmax of
    the loss's own score (`choice_scores`, no dropout, the rationale as given), and whether the
    row counts (`counted_rows`), as in the `accuracy` metric of `pinto_loss`."""
    scores = choice_scores(model, params, batch, batch["encoder_input_tokens"], None)
    labels = batch["choice_label"].astype(jnp.int32)
    return jnp.argmax(scores, axis=-1).astype(jnp.int32), counted_rows(labels, real_choices(batch))


def choice_cross_entropy(
    scores: jax.Array, labels: jax.Array, real: jax.Array, label_smoothing: float = 0.0
) -> jax.Array:
    """[B] cross-entropy of softmax(scores) against the label, smoothed over the real choices."""
    real = real.astype(jnp.float32)
    onehot = jax.nn.one_hot(labels, scores.shape[-1], dtype=jnp.float32)
    uniform = real / jnp.maximum(jnp.sum(real, axis=-1, keepdims=True), 1.0)
    target = (1.0 - label_smoothing) * onehot + label_smoothing * uniform
    log_p = jax.nn.log_softmax(scores, axis=-1)
    return -jnp.sum(target * jnp.where(real > 0, log_p, 0.0), axis=-1)


def _row_mean(values: jax.Array, rows: jax.Array) -> jax.Array:
    return jnp.sum(values * rows) / jnp.maximum(jnp.sum(rows), 1.0)


def pinto_loss(
    model: nn.Module,
    params: Any,
    batch: dict,
    rng: Optional[jax.Array],
    *,
    cf_weight: float = 1.0,
    label_smoothing: float = 0.1,
    mask_probability: float = 0.5,
    replace_fraction: float = 0.3,
    mask_id: int = 2,
    random_id_low: int = 5,
    random_id_high: Optional[int] = None,
) -> tuple[jax.Array, dict]:
    """`L_task + cf_weight * L_cf` on a `ChoicesConverter` batch (module docstring)."""
    _check(model, batch, label_smoothing)
    perturb_key, dropout_key = jax.random.split(jax.random.PRNGKey(0) if rng is None else rng)
    tokens, rationale = batch["encoder_input_tokens"], batch["rationale_mask"]
    high = model.config.vocab_size if random_id_high is None else random_id_high
    perturbed, masked = perturb_rationale(
        perturb_key,
        tokens,
        rationale,
        mask_probability=mask_probability,
        replace_fraction=replace_fraction,
        mask_id=mask_id,
        random_id_low=random_id_low,
        random_id_high=high,
    )
    both = {k: jnp.concatenate([batch[k]] * 2) for k in BATCH_FEATURES[2:]}
    dropout = None if rng is None else dropout_key
    scores = choice_scores(model, params, both, jnp.concatenate([tokens, perturbed]), dropout)
    factual, counterfactual = jnp.split(scores, 2)
    labels = batch["choice_label"].astype(jnp.int32)
    real = real_choices(batch)
    rows = counted_rows(labels, real).astype(jnp.float32)
    task_loss = _row_mean(choice_cross_entropy(factual, labels, real), rows)
    cf_loss = _row_mean(choice_cross_entropy(counterfactual, labels, real, label_smoothing), rows)
    loss = task_loss + cf_weight * cf_loss
    in_rationale = (rationale > 0) & ~masked[:, None]
    metrics = {
        "loss": loss,
        "task_loss": task_loss,
        "cf_loss": cf_loss,
        "accuracy": _row_mean(jnp.argmax(factual, -1) == labels, rows),
        "cf_accuracy": _row_mean(jnp.argmax(counterfactual, -1) == labels, rows),
        "masked_rows": jnp.mean(masked.astype(jnp.float32)),
        "replaced_fraction": jnp.sum(in_rationale & (perturbed != tokens))
        / jnp.maximum(jnp.sum(in_rationale), 1),
        "skipped_rows": jnp.sum(1.0 - rows),
        "denominator": jnp.sum(rows),
    }
    return loss, metrics


def _check(model: nn.Module, batch: dict, label_smoothing: float) -> None:
    """Clear errors for a batch that is not a multiple-choice batch or a model without encoder."""
    missing = [k for k in BATCH_FEATURES if k not in batch]
    if missing:
        raise KeyError(
            f"pinto_loss needs {missing} in the batch (use ChoicesConverter on a "
            f"`*_choices` task); got {sorted(batch)}"
        )
    architecture = getattr(model.config, "architecture", None)
    if architecture not in ("encoder_decoder", "decoder"):
        raise ValueError(
            "pinto_loss scores choices with an encoder-decoder (T5) or a decoder-only student, "
            f"got a {architecture} model"
        )
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
