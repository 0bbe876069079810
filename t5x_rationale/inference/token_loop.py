"""Greedy and sampled decoding (temperature, top-k, top-p), one sequence per row; the
per-row choice of a token is `sampling`'s."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from t5x_rationale.inference.decode_config import (
    DecodeConfig,
    DecodeResult,
    StepFn,
    keep_going,
    prompt_token,
)
from t5x_rationale.inference.sampling import first_argmax, sample_token


class _TokenState(NamedTuple):
    pos: jax.Array  # position fed this step (shared by all rows)
    last: jax.Array  # [B] token chosen at the previous step
    cache: Any
    tokens: jax.Array  # [B, T]
    lengths: jax.Array  # [B]
    scores: jax.Array  # [B]
    done: jax.Array  # [B]


def token_loop(
    step: StepFn, cache, prompt, lengths_in, start: int, config: DecodeConfig, forbidden, rng
) -> DecodeResult:
    """Greedy or sampled decoding, one sequence per row (prompt [B, P] of lengths_in [B])."""
    rows, width = prompt.shape
    limit = config.max_decode_length
    columns = jnp.arange(limit, dtype=jnp.int32)

    def choose(logits, pos):
        allowed = jnp.where(forbidden, -jnp.inf, logits)
        if config.method == "greedy":
            return first_argmax(allowed)
        return sample_token(jax.random.fold_in(rng, pos), allowed, config)

    def body(s: _TokenState) -> _TokenState:
        fed = jnp.where(s.pos < lengths_in, prompt_token(prompt, s.pos), s.last)
        logits, cache = step(s.cache, fed)
        generated = s.pos + 1 - lengths_in  # output column of the token predicted now
        active = (generated >= 0) & ~s.done
        token = jnp.where(active, choose(logits, s.pos), 0).astype(jnp.int32)
        # the token's log-softmax without materialising it over the vocabulary
        log_norm = jax.nn.logsumexp(logits, axis=-1)
        token_log_prob = jnp.take_along_axis(logits, token[:, None], axis=-1)[:, 0] - log_norm
        write = active[:, None] & (columns[None] == generated[:, None])
        return _TokenState(
            pos=s.pos + 1,
            last=token,
            cache=cache,
            tokens=jnp.where(write, token[:, None], s.tokens),
            lengths=jnp.where(active, generated + 1, s.lengths),
            scores=s.scores + jnp.where(active, token_log_prob, 0.0),
            done=s.done | (active & ((token == config.eos_id) | (generated >= limit - 1))),
        )

    init = _TokenState(
        pos=jnp.asarray(start, jnp.int32),
        last=jnp.zeros((rows,), jnp.int32),
        cache=cache,
        tokens=jnp.zeros((rows, limit), jnp.int32),
        lengths=jnp.zeros((rows,), jnp.int32),
        scores=jnp.zeros((rows,), jnp.float32),
        done=jnp.zeros((rows,), bool),
    )
    final = jax.lax.while_loop(keep_going(width + limit - 1), body, init)
    return DecodeResult(final.tokens, final.lengths, final.scores)
