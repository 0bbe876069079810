"""Quiet-STaR objective (METHODS.md section 2): thoughts at every position, mixed predictions.

Each row is repeated P times (adjacent copies) so every position gets P sampled thoughts.
With y the target tokens, base log-probabilities lp_base[i] = log p(y[i] | x[..i]) and the
mixed log-probabilities lp_s[i] of talk step s (predicting y[i + s] after the thought):

    L_nll    = base_weight * CE_base + (1 - base_weight) * mean_s CE_talk_s
    R[i]     = sum_s valid_s[i] * (lp_s[i] - stop_gradient(lp_base[i + s]))
    A        = R - mean over the P thoughts of the same position   (stop-gradient)
    A+       = max(A, 0) when `clip_advantage` (the reference), else A
    L_policy = -mean_i A+[i] * sum_t log softmax(logits_t / score_temperature)[thought_t]
    L        = L_nll + beta * L_policy

Means run over real target tokens; talk step s at position i counts when y[i + s] is real
and in the same packed document as position i.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from t5x_rationale.architectures.axes import constrain
from t5x_rationale.architectures.quiet_star_lm import QuietStarConfig
from t5x_rationale.objectives.cross_entropy import weighted_mean
from t5x_rationale.quiet_star.sampling import token_logp
from t5x_rationale.quiet_star.spec import Context, ThinkingSpec
from t5x_rationale.quiet_star.steps import first_copies, repeat_copies, shift
from t5x_rationale.quiet_star.think import think


def repeat_rows(batch: dict, copies: int) -> dict:
    """Each row `copies` times, copies adjacent (row r -> rows r*P .. r*P + P - 1)."""
    return {
        k: constrain(jnp.repeat(v, copies, axis=0), ("batch",) + (None,) * (v.ndim - 1))
        for k, v in batch.items()
    }


def talk_validity(valid: jax.Array, segment_ids: Optional[jax.Array], num_talk: int) -> jax.Array:
    """[n_t, N, T]: talk step s at position i has a real target y[i + s] in i's document."""
    out = []
    for s in range(num_talk):
        ok = shift(valid, s, fill=False)
        if segment_ids is not None:
            ok = ok & (shift(segment_ids, s) == segment_ids)
        out.append(ok)
    return jnp.stack(out)


def advantages(rewards: jax.Array, copies: int, clip: bool) -> jax.Array:
    """Reward minus the mean over the `copies` adjacent rows that share a position; A+ if clip."""
    n, t = rewards.shape
    grouped = rewards.reshape(n // copies, copies, t)
    a = (grouped - jnp.mean(grouped, axis=1, keepdims=True)).reshape(n, t)
    return jnp.maximum(a, 0.0) if clip else a


def quiet_star_terms(
    config: QuietStarConfig,
    spec: ThinkingSpec,
    params: Any,
    batch: dict,
    rng: jax.Array,
    *,
    num_thoughts: int,
    clip_advantage: bool,
    forced_thoughts: Optional[jax.Array] = None,
) -> dict:
    """Every per-position quantity of the objective on the P-times repeated batch."""
    rows = repeat_rows(batch, num_thoughts)
    targets = rows["decoder_target_tokens"]
    weights = rows.get("decoder_loss_weights")
    valid = (targets > 0) if weights is None else (weights > 0)
    segments = rows.get("decoder_segment_ids")
    ctx = Context(
        targets=targets, valid=valid, segment_ids=segments, rng=rng, forced_thoughts=forced_thoughts
    )
    out = think(config, spec, params, rows["decoder_input_tokens"], ctx, copies=num_thoughts)
    base_logp = repeat_copies(
        token_logp(out["base_logits"], first_copies(targets, num_thoughts)), num_thoughts
    )
    talk_logp = out["true_logp"][-spec.num_talk :]  # steps n_a - 1 .. F - 1
    talk_valid = talk_validity(valid, segments, spec.num_talk)
    base_at = jnp.stack([shift(jax.lax.stop_gradient(base_logp), s) for s in range(spec.num_talk)])
    rewards = jax.lax.stop_gradient(
        jnp.sum(jnp.where(talk_valid, talk_logp - base_at, 0.0), axis=0)
    )
    adv = jax.lax.stop_gradient(advantages(rewards, num_thoughts, clip_advantage))
    thought_logp = jnp.sum(
        out["policy_logp"][: spec.num_thought_tokens], axis=0
    )  # steps 1 .. n_a - 3
    return dict(
        out,
        base_logp=base_logp,
        talk_logp=talk_logp,
        valid=valid,
        talk_valid=talk_valid,
        rewards=rewards,
        advantages=adv,
        thought_logp=thought_logp,
        targets=targets,
    )


def quiet_star_loss(
    model: nn.Module,
    params: Any,
    batch: dict,
    rng: Optional[jax.Array],
    *,
    num_ahead: int = 12,
    num_talk: int = 4,
    num_thoughts: int = 2,
    sample_temperature: float = 1.0,
    score_temperature: float = 3.0,
    beta: float = 1e6,
    clip_advantage: bool = True,
    base_weight: float = 0.5,
    implementation: str = "streams",
    record: Sequence[str] = ThinkingSpec.record,
) -> tuple[jax.Array, dict]:
    """The Quiet-STaR loss for a `QuietStarLM` (defaults: the reference settings).

    Args:
      num_ahead: n_a, thinking steps counting the base step and the start/end thoughts.
      num_talk: n_t, true future tokens scored after each thought.
      num_thoughts: P, thoughts per position (rows repeated P times).
      sample_temperature, score_temperature: thoughts are sampled at the first and their
        log-probabilities for the policy term are scored at the second.
      beta: weight of the policy term.
      clip_advantage: keep only positive advantages (the reference).
      base_weight: weight of the base cross-entropy in L_nll (the rest goes to the talk steps).
      implementation: 'streams' (default) or 'dense_mask' (the reference construction).
      record: streams only: what each thinking step keeps for its backward instead of
        recomputing it (projection outputs, the attention output; `quiet_star.spec.RECORDABLE`);
        more is faster and uses more memory, () recomputes all but the keys and values.
    """
    config = model.config
    if not isinstance(config, QuietStarConfig):
        raise TypeError(
            f"quiet_star_loss needs a QuietStarLM (model_config = @quiet_star_config()), got a model "
            f"with {type(config).__name__}"
        )
    if num_thoughts < 1:
        raise ValueError(f"num_thoughts must be >= 1, got {num_thoughts}")
    spec = ThinkingSpec(
        num_ahead,
        num_talk,
        sample_temperature,
        score_temperature,
        implementation,
        record=tuple(record),
    )
    rng = jax.random.PRNGKey(0) if rng is None else rng
    terms = quiet_star_terms(
        config, spec, params, batch, rng, num_thoughts=num_thoughts, clip_advantage=clip_advantage
    )
    return combine_terms(terms, beta=beta, base_weight=base_weight)


def combine_terms(terms: dict, *, beta: float, base_weight: float) -> tuple[jax.Array, dict]:
    """(loss, metrics) from `quiet_star_terms`."""
    valid = terms["valid"].astype(jnp.float32)
    base_ce, denominator = weighted_mean(-terms["base_logp"], valid)
    talk_ce = jnp.mean(
        jnp.stack(
            [weighted_mean(-lp, v)[0] for lp, v in zip(terms["talk_logp"], terms["talk_valid"])]
        )
    )
    nll = base_weight * base_ce + (1 - base_weight) * talk_ce
    policy = -weighted_mean(terms["advantages"] * terms["thought_logp"], valid)[0]
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
    }
    return loss, metrics
