"""Quiet-STaR objective (docs/methods.md): thoughts at every position, mixed predictions.

Each row is repeated P times (adjacent copies) so every position gets P sampled thoughts.
With y the target tokens, base log-probabilities lp_base[i] = log p(y[i] | x[..i]) and the
mixed log-probabilities lp_s[i] of talk step s (predicting y[i + s] after the thought):

    L_nll    = base_weight * CE_base + (1 - base_weight) * mean_s CE_talk_s
    R[i]     = sum_s valid_s[i] * (lp_s[i] - stop_gradient(lp_base[i + s]))
    A        = R - mean over the P thoughts of the same position   (stop-gradient)
    A+       = max(A, 0) when `clip_advantage` (the reference), else A
    lp_t[i]  = log softmax(logits_t / score_temperature)[thought_t], thought ids masked out
    L_policy = -mean_i A+[i] * mean_t lp_t[i]          (policy_form "reference", default)
    L_policy = -mean_i A+[i] * sum_t lp_t[i]           (policy_form "summed")
    L        = L_nll + beta * L_policy

The NLL means run over real target tokens; talk step s at position i counts when y[i + s]
is real and in the same packed document as position i. The policy term's mean over i is the
reference's: every row's positions 0 .. T - n_t - 1 (those whose n_t future targets all lie
in the row), padding included, so beta weighs it as in the reference. The "summed" form
(this project's first one) sums over the n_a - 3 thought tokens and means over real targets:
n_a - 3 times the reference's weight on full rows.
"""

from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from t5x_rationale.objectives.cross_entropy import weighted_mean
from t5x_rationale.quiet_star.spec import ThinkingSpec
from t5x_rationale.quiet_star.terms import quiet_star_terms

POLICY_FORMS = ("reference", "summed")


def quiet_star_loss(
    model: nn.Module,
    params: Any,
    batch: dict,
    rng: Optional[jax.Array],
    *,
    spec: ThinkingSpec = ThinkingSpec(),
    beta: float = 1e6,
    clip_advantage: bool = True,
    base_weight: float = 0.5,
    policy_form: str = "reference",
) -> tuple[jax.Array, dict]:
    """The Quiet-STaR loss for a `QuietStarLM` (defaults: the reference settings).

    Args:
      spec: the thinking settings (n_a, n_t, P, sampling and scoring temperatures,
        implementation, what streams steps record); `train.thinking` hands it in.
      beta: weight of the policy term.
      clip_advantage: keep only positive advantages (the reference).
      base_weight: weight of the base cross-entropy in L_nll (the rest goes to the talk steps).
      policy_form: "reference" (mean over thought tokens and positions, as the reference
        code) or "summed" (sum over thought tokens, mean over real targets); see above.
    """
    config = model.config
    if config.architecture != "quiet_star":
        raise TypeError(
            f"quiet_star_loss needs a QuietStarLM (model_config = @quiet_star_config()), got a "
            f"{config.architecture} model"
        )
    if policy_form not in POLICY_FORMS:
        raise ValueError(f"quiet_star_loss.policy_form {policy_form!r} not in {POLICY_FORMS}")
    rng = jax.random.PRNGKey(0) if rng is None else rng
    terms = quiet_star_terms(config, spec, params, batch, rng, clip_advantage=clip_advantage)
    policy = policy_term(terms, spec, policy_form)
    return combine_terms(terms, policy, beta=beta, base_weight=base_weight)


def policy_term(terms: dict, spec: ThinkingSpec, policy_form: str) -> jax.Array:
    """L_policy from `quiet_star_terms` in the given form (see the module docstring)."""
    gain = terms["advantages"] * terms["thought_logp"]  # A+ * sum over the thought tokens
    if policy_form == "summed":
        return -weighted_mean(gain, terms["valid"].astype(jnp.float32))[0]
    length = gain.shape[1]
    counted = (jnp.arange(length) < length - spec.num_talk).astype(jnp.float32)
    positions = gain.shape[0] * max(length - spec.num_talk, 1)
    return -jnp.sum(gain * counted) / (spec.num_thought_tokens * positions)


def combine_terms(
    terms: dict, policy: jax.Array, *, beta: float, base_weight: float
) -> tuple[jax.Array, dict]:
    """(loss, metrics) from `quiet_star_terms` and the policy term."""
    valid = terms["valid"].astype(jnp.float32)
    base_ce, denominator = weighted_mean(-terms["base_logp"], valid)
    talk_ce = jnp.mean(
        jnp.stack(
            [weighted_mean(-lp, v)[0] for lp, v in zip(terms["talk_logp"], terms["talk_valid"])]
        )
    )
    nll = base_weight * base_ce + (1 - base_weight) * talk_ce
    loss = nll + beta * policy
    first_talk = terms["talk_valid"][0].astype(jnp.float32)
    metrics = {
        "loss": loss,
        "nll": nll,
        "policy_loss": policy,
        "base_ce": base_ce,
        "talk_ce": talk_ce,
        "mixed_ce_next": weighted_mean(-terms["talk_logp"][0], first_talk)[0],
        "reward": weighted_mean(terms["rewards"], valid)[0],
        "advantage": weighted_mean(terms["advantages"], valid)[0],
        "mixing_weight": weighted_mean(
            terms["mixing_weight"][-terms["talk_logp"].shape[0]], first_talk
        )[0],
        "denominator": denominator,
        **thought_statistics(terms, valid),
    }
    return loss, metrics


def thought_statistics(terms: dict, valid: jax.Array) -> dict:
    """Means over real positions: the share with a positive advantage, the thoughts' entropy
    (nats per token at the sampling temperature, estimated by the sampled tokens' -log p)
    and their diversity (distinct tokens per thought over its length: 1/n for a repeated
    token, 1 for all different)."""
    tokens = jnp.sort(terms["thought_tokens"], axis=0)  # [n_a - 3, N, T]
    distinct = 1 + jnp.sum(tokens[1:] != tokens[:-1], axis=0)
    return {
        "positive_advantage_share": weighted_mean(
            (terms["advantages"] > 0).astype(jnp.float32), valid
        )[0],
        "thought_entropy": weighted_mean(-jnp.mean(terms["thought_sample_logp"], axis=0), valid)[0],
        "thought_distinct": weighted_mean(distinct.astype(jnp.float32) / tokens.shape[0], valid)[0],
    }
