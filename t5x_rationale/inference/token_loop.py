"""Greedy and sampled decoding (temperature, top-k, top-p), one sequence per row."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from t5x_rationale.inference.decode_config import (
    DecodeConfig,
    DecodeResult,
    StepFn,
    keep_going,
    prompt_lengths,
    prompt_token,
)


def filter_logits(logits: jax.Array, config: DecodeConfig) -> jax.Array:
    """Temperature, then top-k, then top-p (nucleus) filtering; removed tokens get -inf."""
    logits = logits / config.temperature
    # Ties with the last kept value are kept too.
    if config.top_k > 0 and config.top_k < logits.shape[-1]:
        kth = jax.lax.top_k(logits, config.top_k)[0][..., -1:]
        logits = jnp.where(logits >= kth, logits, -jnp.inf)
    if config.top_p < 1.0:
        descending = -jnp.sort(-logits, axis=-1)
        probs = jax.nn.softmax(descending, axis=-1)
        mass_before = jnp.cumsum(probs, axis=-1) - probs
        # The smallest prefix whose mass reaches top_p; the top token is always kept.
        threshold = jnp.min(
            jnp.where(mass_before < config.top_p, descending, jnp.inf), axis=-1, keepdims=True
        )
        logits = jnp.where(logits >= threshold, logits, -jnp.inf)
    return logits


class _TokenState(NamedTuple):
    pos: jax.Array  # position fed this step (shared by all rows)
    last: jax.Array  # [B] token chosen at the previous step
    cache: Any
    tokens: jax.Array  # [B, T]
    lengths: jax.Array  # [B]
    scores: jax.Array  # [B]
    done: jax.Array  # [B]


def token_loop(
    step: StepFn, cache, prompt, start: int, config: DecodeConfig, forbidden, rng
) -> DecodeResult:
    """Greedy or sampled decoding, one sequence per row."""
    rows, width = prompt.shape
    limit = config.max_decode_length
    lengths_in = prompt_lengths(prompt)
    columns = jnp.arange(limit, dtype=jnp.int32)

    def choose(logits, log_probs, pos):
        if config.method == "greedy":
            return jnp.argmax(jnp.where(forbidden, -jnp.inf, log_probs), axis=-1)
        filtered = filter_logits(jnp.where(forbidden, -jnp.inf, logits), config)
        return jax.random.categorical(jax.random.fold_in(rng, pos), filtered, axis=-1)

    def body(s: _TokenState) -> _TokenState:
        fed = jnp.where(s.pos < lengths_in, prompt_token(prompt, s.pos), s.last)
        logits, cache = step(s.cache, fed)
        log_probs = jax.nn.log_softmax(logits, axis=-1)
        generated = s.pos + 1 - lengths_in  # output column of the token predicted now
        active = (generated >= 0) & ~s.done
        token = jnp.where(active, choose(logits, log_probs, s.pos), 0).astype(jnp.int32)
        token_log_prob = jnp.take_along_axis(log_probs, token[:, None], axis=-1)[:, 0]
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
