"""The per-position terms of Quiet-STaR, shared by the loss and by thought scoring.

With y the target tokens, lp_base[i] = log p(y[i] | x[..i]) and lp_s[i] the mixed
log-probability of talk step s (predicting y[i + s] after the thought):
R[i] = sum_s valid_s[i] * (lp_s[i] - stop_gradient(lp_base[i + s])), and the advantage is R
minus its mean over the P thoughts of the same position (A+ = max(A, 0) when clipped).
"""

from __future__ import annotations

from typing import Any, Optional

import jax
import jax.numpy as jnp

from t5x_rationale.architectures.axes import constrain
from t5x_rationale.architectures.quiet_star_lm import QuietStarConfig
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
    clip_advantage: bool,
    forced_thoughts: Optional[jax.Array] = None,
) -> dict:
    """Every per-position quantity of the objective on the P-times repeated batch
    (P = `spec.num_thoughts`): base and talk log-probabilities, validity, rewards,
    advantages, the summed thought log-probabilities, the thought tokens [n_a - 3, N, T] with
    their log-probabilities at the sampling temperature, and `think`'s outputs."""
    num_thoughts = spec.num_thoughts
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
    # steps 1 .. n_a - 3
    thought_logp = jnp.sum(out["policy_logp"][: spec.num_thought_tokens], axis=0)
    # the thought tokens are sampled at steps 1 .. n_a - 3 and fed at steps 2 .. n_a - 2
    thought_tokens = out["next_token"][: spec.num_thought_tokens]
    return dict(
        out,
        base_logp=base_logp,
        talk_logp=talk_logp,
        valid=valid,
        talk_valid=talk_valid,
        rewards=rewards,
        advantages=adv,
        thought_logp=thought_logp,
        thought_tokens=thought_tokens,
        thought_sample_logp=out["sample_logp"][: spec.num_thought_tokens],
        targets=targets,
    )
