"""Beam search over the KV cache, with T5's length-normalised scores and early stopping."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from t5x_rationale.inference.decode_config import (
    DecodeConfig,
    DecodeResult,
    StepFn,
    keep_going,
    length_normalizer,
    prompt_token,
)
from t5x_rationale.inference.kv_cache import constrain_cache, map_cache_rows


class _BeamState(NamedTuple):
    pos: jax.Array
    last: jax.Array  # [B, K]
    cache: Any  # rows b * K + k
    alive_tokens: jax.Array  # [B, K, T]
    alive_scores: jax.Array  # [B, K] summed log-probs; -inf for empty slots
    best_tokens: jax.Array  # [B, T] best finished hypothesis
    best_lengths: jax.Array  # [B]
    best_scores: jax.Array  # [B] length-normalised; -inf until one finishes
    done: jax.Array  # [B]


class _Expansion(NamedTuple):
    """The K best one-token expansions of each row's alive beams."""

    scores: jax.Array  # [B, K] summed log-probs
    parent: jax.Array  # [B, K] alive slot each one extends
    token: jax.Array  # [B, K] the token it adds
    tokens: jax.Array  # [B, K, T] the parent's tokens with that token written


def beam_loop(
    step: StepFn, cache, prompt, lengths_in, start: int, config: DecodeConfig, forbidden
) -> DecodeResult:
    """Beam search: keep the K best expansions; EOS (or max length) moves one to 'finished'.

    A finished hypothesis leaves the beam (the beam shrinks), so num_beams=1 is exactly
    greedy. Finished hypotheses compete on sum of log-probs / length_normalizer(length); a
    row stops when no alive beam can still beat its best finished one (log-probs are <= 0, so
    the bound is the best alive sum over the largest normaliser still reachable).
    """
    rows, width = prompt.shape
    beams, limit = config.num_beams, config.max_decode_length

    def body(s: _BeamState) -> _BeamState:
        fed = jnp.where((s.pos < lengths_in)[:, None], prompt_token(prompt, s.pos)[:, None], s.last)
        logits, cache = step(s.cache, fed.reshape(-1))
        log_probs = jax.nn.log_softmax(logits, axis=-1).reshape(rows, beams, -1)
        log_probs = jnp.where(forbidden, -jnp.inf, log_probs)
        return _advance(s, fed, log_probs, cache, s.pos + 1 - lengths_in, config)

    init = _initial_state(rows, start, cache, config)
    final = jax.lax.while_loop(keep_going(width + limit - 1), body, init)
    return DecodeResult(final.best_tokens, final.best_lengths, final.best_scores)


def _initial_state(rows: int, start: int, cache, config: DecodeConfig) -> _BeamState:
    """Nothing finished yet, and one live beam per row so the first expansion is not repeated
    K times."""
    beams, limit = config.num_beams, config.max_decode_length
    slots = jnp.arange(beams, dtype=jnp.int32)
    first_alive = jnp.where(slots == 0, 0.0, -jnp.inf).astype(jnp.float32)
    return _BeamState(
        pos=jnp.asarray(start, jnp.int32),
        last=jnp.zeros((rows, beams), jnp.int32),
        cache=cache,
        alive_tokens=jnp.zeros((rows, beams, limit), jnp.int32),
        alive_scores=jnp.broadcast_to(first_alive, (rows, beams)),
        best_tokens=jnp.zeros((rows, limit), jnp.int32),
        best_lengths=jnp.zeros((rows,), jnp.int32),
        best_scores=jnp.full((rows,), -jnp.inf, jnp.float32),
        done=jnp.zeros((rows,), bool),
    )


def _advance(s: _BeamState, fed, log_probs, cache, generated, config: DecodeConfig) -> _BeamState:
    """One beam step from the next-token log-probs [B, K, vocab] of every slot.

    `fed` [B, K] is what the slots were fed this step and `generated` [B] the output column
    of the token chosen now (negative while a row is still inside its prompt).
    """
    limit, alpha = config.max_decode_length, config.length_penalty
    expanding = (generated >= 0) & ~s.done  # [B]
    top = _expand(s.alive_scores, s.alive_tokens, log_probs, generated)
    finishing = (top.token == config.eos_id) | (generated[:, None] >= limit - 1)
    normalised = top.scores / length_normalizer(generated + 1, alpha)[:, None]
    finished_scores = jnp.where(finishing & expanding[:, None], normalised, -jnp.inf)
    pick = jnp.argmax(finished_scores, axis=1)
    pick_score = jnp.take_along_axis(finished_scores, pick[:, None], axis=1)[:, 0]
    better = pick_score > s.best_scores
    pick_tokens = jnp.take_along_axis(top.tokens, pick[:, None, None], axis=1)[:, 0]

    keep = expanding[:, None]
    alive_scores = jnp.where(keep, jnp.where(finishing, -jnp.inf, top.scores), s.alive_scores)
    slots = jnp.arange(config.num_beams, dtype=jnp.int32)
    cache = _reorder_cache(cache, jnp.where(keep, top.parent, slots))
    # Descendants are at least one token longer and never score above their parent's sum.
    reachable = jnp.maximum(
        length_normalizer(generated + 2, alpha), length_normalizer(limit, alpha)
    )
    bound = jnp.max(alive_scores, axis=1) / reachable
    best_scores = jnp.where(better, pick_score, s.best_scores)
    stop = expanding & ((bound <= best_scores) | (generated >= limit - 1))
    return _BeamState(
        pos=s.pos + 1,
        last=jnp.where(keep, top.token, fed),
        cache=constrain_cache(cache),
        alive_tokens=jnp.where(keep[:, :, None], top.tokens, s.alive_tokens),
        alive_scores=alive_scores,
        best_tokens=jnp.where(better[:, None], pick_tokens, s.best_tokens),
        best_lengths=jnp.where(better, generated + 1, s.best_lengths),
        best_scores=best_scores,
        done=s.done | stop,
    )


def _expand(alive_scores, alive_tokens, log_probs, generated) -> _Expansion:
    """The K best (slot, token) pairs per row by summed log-prob, over all alive slots."""
    rows, beams, vocab = log_probs.shape
    limit = alive_tokens.shape[-1]
    columns = jnp.arange(limit, dtype=jnp.int32)
    candidates = (alive_scores[:, :, None] + log_probs).reshape(rows, beams * vocab)
    top_scores, top_index = jax.lax.top_k(candidates, beams)
    parent, token = top_index // vocab, (top_index % vocab).astype(jnp.int32)
    parent_tokens = jnp.take_along_axis(alive_tokens, parent[:, :, None], axis=1)
    tokens = jnp.where(columns == generated[:, None, None], token[:, :, None], parent_tokens)
    return _Expansion(top_scores, parent, token, tokens)


def _reorder_cache(cache, parent: jax.Array):
    """Gives cache row b * K + k the keys/values of row b * K + parent[b, k]."""
    rows, beams = parent.shape
    row_offsets = jnp.arange(rows, dtype=jnp.int32)[:, None] * beams
    return map_cache_rows(
        lambda x, axis: jnp.take(x, (row_offsets + parent).reshape(-1), axis=axis), cache
    )
