"""SCOTT counterfactual training (Wang et al. 2023, arXiv 2305.01879): follow your rationale.

A batch from a `{name}_counterfactual` task (`data/counterfactual.py`, packed by a
`Counterfactual*Converter`) mixes

- factual rows, `[factual] q -> [factual] r So the answer is a` (task id 1, or 3 when the
  example had no usable negative), with loss on every target token, and
- counterfactual rows, `[counterfactual] q -> r' So the answer is a'` (task id 2), where r' is
  a teacher negative that reaches the wrong answer a'. The converter gives weight only to the
  answer tokens a' and the EOS after them, so the student learns to answer what its rationale
  says rather than to write r'.

Each part's cross-entropy is the token mean over its own weighted tokens (as in
`step_by_step_loss`, whose helpers this reuses), and

    L = (1 - alpha) * CE(factual) + alpha * CE(counterfactual answers),     alpha = 0.5.

A batch without tokens of one part contributes 0 for it. Besides the losses and token
accuracies, the metrics count rows (a row starts where the decoder input is 0 and the target is
not padding): `counterfactual_row_fraction` and `factual_only_fraction`, the share of factual
rows whose example gave no counterfactual row (no negatives, or negatives without labels).
"""

from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from t5x_rationale.objectives.cross_entropy import weighted_mean
from t5x_rationale.objectives.step_by_step import require_task_ids, token_terms

# The task ids of data/counterfactual.py (objectives do not import the data wing).
FACTUAL_TASK_ID = 1
COUNTERFACTUAL_TASK_ID = 2
FACTUAL_ONLY_TASK_ID = 3
_HINT = "a Counterfactual*Converter on a {name}_counterfactual task"


def _row_fractions(batch: dict, task_ids: jax.Array) -> dict:
    """Counterfactual rows among all rows, and factual-only rows among factual rows."""
    starts = (batch["decoder_input_tokens"] == 0) & (batch["decoder_target_tokens"] > 0)
    count = lambda task: jnp.sum(starts & (task_ids == task)).astype(jnp.float32)  # noqa: E731
    paired, alone = count(FACTUAL_TASK_ID), count(FACTUAL_ONLY_TASK_ID)
    counter = count(COUNTERFACTUAL_TASK_ID)
    return {
        "counterfactual_row_fraction": counter / jnp.maximum(paired + alone + counter, 1.0),
        "factual_only_fraction": alone / jnp.maximum(paired + alone, 1.0),
    }


def counterfactual_loss(
    model: nn.Module,
    params: Any,
    batch: dict,
    rng: Optional[jax.Array],
    *,
    alpha: float = 0.5,
    z_loss: float = 1e-4,
    label_smoothing: float = 0.0,
) -> tuple[jax.Array, dict]:
    """(1 - alpha) * factual CE + alpha * counterfactual answer CE, each a token mean over its
    own rows' weighted tokens; needs `decoder_task_ids` in the batch."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    require_task_ids(batch, "counterfactual_loss", _HINT)
    per_token, z_term, correct, weights = token_terms(
        model, params, batch, rng, z_loss=z_loss, label_smoothing=label_smoothing
    )
    task_ids = batch["decoder_task_ids"]
    factual_w = weights * ((task_ids == FACTUAL_TASK_ID) | (task_ids == FACTUAL_ONLY_TASK_ID))
    counter_w = weights * (task_ids == COUNTERFACTUAL_TASK_ID)
    factual_loss, factual_tokens = weighted_mean(per_token, factual_w)
    counter_loss, counter_tokens = weighted_mean(per_token, counter_w)
    loss = (1.0 - alpha) * factual_loss + alpha * counter_loss
    metrics = {
        "loss": loss,
        "factual_loss": factual_loss,
        "counterfactual_loss": counter_loss,
        "factual_accuracy": weighted_mean(correct, factual_w)[0],
        "counterfactual_accuracy": weighted_mean(correct, counter_w)[0],
        "accuracy": weighted_mean(correct, factual_w + counter_w)[0],
        "z_loss": weighted_mean(z_term, factual_w + counter_w)[0],
        "counterfactual_token_fraction": counter_tokens
        / jnp.maximum(factual_tokens + counter_tokens, 1e-8),
        "denominator": factual_tokens + counter_tokens,
        **_row_fractions(batch, task_ids),
    }
    return loss, metrics
