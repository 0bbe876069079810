"""Autoregressive decoding with the KV cache: greedy, sampling and beam search.

One jitted program per (model, config, prefill length, mesh/rules context): the params are
an argument, the loop is a `jax.lax.while_loop` that stops once every row has finished.

Encoder-decoder: encode once, then feed the decoder token by token starting from token 0.
Decoder-only: `decoder_prompt_tokens` [B, P] are right-padded prompts of different lengths.
The cache keeps one write index for all rows, so the shortest prompt (minus its last token)
is prefilled in one cached call and the loop then feeds one position per step: a row still
inside its prompt is fed its next prompt token (teacher forcing), a row past it is fed the
token chosen at the previous step. Each row's continuation is written from column 0 of the
output. The cache holds P + max_decode_length positions.

Scores are sums of log-probabilities under the model at temperature 1 (the log-softmax of
the raw logits); temperature, top-k/top-p filtering and forbidden ids only change which
token is chosen. Beam search returns its length-normalised score instead (see
`length_normalizer`).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable, NamedTuple, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from t5x_rationale.architectures.axes import constrain

METHODS = ("greedy", "sample", "beam")

# cache -> tokens [N] -> (logits [N, vocab] for the next position, updated cache)
StepFn = Callable[[Any, jax.Array], tuple[jax.Array, Any]]


@dataclasses.dataclass(frozen=True)
class DecodeConfig:
    """How to decode; part of the compilation key, so keep one per use.

    Attributes:
      max_decode_length: generated tokens per row (the output width).
      method: 'greedy', 'sample' or 'beam'.
      temperature, top_k, top_p: sampling only; top_k=0 and top_p=1 turn the filters off.
      num_beams: beam only; beams kept per row.
      length_penalty: beam only; alpha of the T5 normaliser ((5 + len) / 6) ** alpha.
      eos_id: ends a row; kept in the output and counted in its length.
      forbidden_ids: ids that are never emitted by any method (e.g. thought tokens).
    """

    max_decode_length: int
    method: str = "greedy"
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    num_beams: int = 4
    length_penalty: float = 0.6
    eos_id: int = 1
    forbidden_ids: tuple[int, ...] = ()

    def __post_init__(self):
        if not isinstance(self.max_decode_length, int) or self.max_decode_length < 1:
            raise ValueError(
                f"max_decode_length must be a positive int, got {self.max_decode_length!r}"
            )
        if self.method not in METHODS:
            raise ValueError(f"method {self.method!r} not in {METHODS}")
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise ValueError(f"temperature must be positive and finite, got {self.temperature}")
        if not isinstance(self.top_k, int) or self.top_k < 0:
            raise ValueError(f"top_k must be an int >= 0 (0 = off), got {self.top_k!r}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1] (1 = off), got {self.top_p}")
        if not isinstance(self.num_beams, int) or self.num_beams < 1:
            raise ValueError(f"num_beams must be a positive int, got {self.num_beams!r}")
        if not math.isfinite(self.length_penalty):
            raise ValueError(f"length_penalty must be finite, got {self.length_penalty}")
        if not isinstance(self.eos_id, int) or self.eos_id < 0:
            raise ValueError(f"eos_id must be an int >= 0, got {self.eos_id!r}")
        ids = tuple(self.forbidden_ids)
        if any(not isinstance(i, (int, np.integer)) or i < 0 for i in ids):
            raise ValueError(f"forbidden_ids must be ints >= 0, got {ids}")
        if self.eos_id in ids:
            raise ValueError(f"eos_id {self.eos_id} cannot be forbidden: rows could never end")
        # A canonical, hashable tuple (lists are accepted) keeps equal configs one cache entry.
        object.__setattr__(self, "forbidden_ids", tuple(sorted({int(i) for i in ids})))

    def check_vocab(self, vocab_size: int) -> None:
        """Raises if an id of this config is outside the model's vocabulary."""
        bad = [i for i in (self.eos_id,) + self.forbidden_ids if i >= vocab_size]
        if bad:
            raise ValueError(
                f"ids {bad} (eos_id / forbidden_ids) are outside the vocabulary of size "
                f"{vocab_size}"
            )


class DecodeResult(NamedTuple):
    """Decoded continuations, one per row.

    tokens: [B, max_decode_length] int32, zeros after EOS (EOS itself kept).
    lengths: [B] int32, generated tokens up to and including EOS.
    scores: [B] float32, sum of the emitted tokens' model log-probs (temperature 1), or for
      beam search the length-normalised beam score.
    """

    tokens: jax.Array
    lengths: jax.Array
    scores: jax.Array


def length_normalizer(length: jax.Array, alpha: float) -> jax.Array:
    """T5's beam-score normaliser ((5 + length) / 6) ** alpha (1 at length 1; alpha 0: none)."""
    length = jnp.maximum(length, 1).astype(jnp.float32)
    return ((5.0 + length) / 6.0) ** alpha


def prompt_lengths(prompt: jax.Array) -> jax.Array:
    """[B] length of each right-padded prompt (last non-pad position + 1), at least 1.

    An empty prompt counts as the single pad token 0: the row is fed 0 first, as the
    encoder-decoder's decoder is.
    """
    positions = jnp.arange(1, prompt.shape[1] + 1, dtype=jnp.int32)
    return jnp.maximum(jnp.max(jnp.where(prompt != 0, positions, 0), axis=1), 1)


# ------------------------------------------------------------------------------ entry point


def decode(
    model: nn.Module,
    params: Any,
    batch: dict[str, Any],
    config: DecodeConfig,
    *,
    rng: Optional[jax.Array] = None,
) -> DecodeResult:
    """Decodes every row of `batch` with `config`.

    Args:
      model: an `EncoderDecoder` or `DecoderOnly` from `architectures.build_model`.
      params: its (unboxed) params, sharded or not.
      batch: `encoder_input_tokens` [B, S] (encoder-decoder) or `decoder_prompt_tokens`
        [B, P] right-padded with 0 (decoder-only).
      config: the decoding method and its settings.
      rng: a PRNG key; required for sampling.

    Call inside `Trainer.context()` (mesh + logical rules) to decode with sharded params;
    rows are then split over ('data', 'fsdp') when the batch size allows it.

    Decoder-only batches cost one small host sync: the shortest prompt length sets the
    static prefill width, so each distinct shortest length compiles its own program.
    """
    config.check_vocab(model.config.vocab_size)
    if config.method == "sample" and rng is None:
        raise ValueError("method='sample' needs an rng key")
    rng = jax.random.PRNGKey(0) if rng is None else rng
    architecture = model.config.architecture
    if architecture == "encoder_decoder":
        tokens = _required(batch, "encoder_input_tokens")
        prefill = 0
    elif architecture == "decoder":
        tokens = _required(batch, "decoder_prompt_tokens")
        prefill = int(_shortest_prompt(tokens)) - 1
    else:
        raise ValueError(f"unknown architecture {architecture!r}")
    fn = _compiled(model, config, prefill, _context_key())
    return fn(params, tokens, rng)


@jax.jit
def _shortest_prompt(prompt: jax.Array) -> jax.Array:
    """Scalar length of the shortest prompt (read on the host: it sets the prefill width)."""
    return jnp.min(prompt_lengths(prompt))


def _required(batch: dict[str, Any], name: str):
    """The rank-2 token array `name` of the batch, with a clear error when missing."""
    if name not in batch:
        raise KeyError(f"decoding this model needs batch[{name!r}]; got keys {sorted(batch)}")
    tokens = batch[name]
    if len(np.shape(tokens)) != 2:
        raise ValueError(f"batch[{name!r}] must be [batch, length], got shape {np.shape(tokens)}")
    return tokens


def _context_key() -> tuple:
    """Logical rules and mesh in effect: they shape the traced program but are not jit inputs."""
    rules = tuple(
        (name, tuple(axes) if isinstance(axes, list) else axes)
        for name, axes in nn.get_logical_axis_rules()
    )
    return rules, jax.sharding.get_abstract_mesh()


@functools.lru_cache(maxsize=64)
def _compiled(model: nn.Module, config: DecodeConfig, prefill: int, context: tuple):
    """The jitted decoder for one model/config/prefill length (jit then caches per shape)."""
    del context  # only part of the cache key
    if model.config.architecture == "encoder_decoder":
        return jax.jit(functools.partial(_decode_encoder_decoder, model, config))
    return jax.jit(functools.partial(_decode_decoder_only, model, config, prefill))


# ------------------------------------------------------------------------ model adapters


def _decode_encoder_decoder(
    model, config: DecodeConfig, params, encoder_tokens, rng
) -> DecodeResult:
    """Encodes once, then runs the loop with the 1-token 'prompt' 0 for every row."""
    encoder_tokens = constrain(encoder_tokens, ("batch", "length"))
    rows = encoder_tokens.shape[0]
    copies = config.num_beams if config.method == "beam" else 1
    encoded = model.apply({"params": params}, encoder_tokens, method=model.encode)
    encoded = jnp.repeat(encoded, copies, axis=0)
    encoder_tokens = jnp.repeat(encoder_tokens, copies, axis=0)

    def apply(variables, tokens):
        return model.apply(
            variables,
            encoded,
            encoder_tokens,
            tokens,
            decode=True,
            mutable=["cache"],
            method=model.decode,
        )

    cache = _new_cache(apply, params, rows * copies, config.max_decode_length)
    prompt = jnp.zeros((rows, 1), jnp.int32)
    return _run_loop(
        _step_fn(apply, params),
        cache,
        prompt,
        start=0,
        config=config,
        rng=rng,
        vocab_size=model.config.vocab_size,
    )


def _decode_decoder_only(
    model, config: DecodeConfig, prefill: int, params, prompt, rng
) -> DecodeResult:
    """Prefills the shared prompt prefix, then runs the loop (beams copy the prefilled cache)."""
    prompt = constrain(prompt.astype(jnp.int32), ("batch", "length"))
    rows, prompt_width = prompt.shape

    def apply(variables, tokens):
        return model.apply(variables, tokens, decode=True, mutable=["cache"])

    cache = _new_cache(apply, params, rows, prompt_width + config.max_decode_length)
    if prefill > 0:
        _, mutated = apply({"params": params, "cache": cache}, prompt[:, :prefill])
        cache = mutated["cache"]
    if config.method == "beam":
        cache = _map_cache_rows(lambda x, axis: jnp.repeat(x, config.num_beams, axis=axis), cache)
    return _run_loop(
        _step_fn(apply, params),
        cache,
        prompt,
        start=prefill,
        config=config,
        rng=rng,
        vocab_size=model.config.vocab_size,
    )


def _new_cache(apply, params, rows: int, length: int):
    """An empty cache of `length` positions (the init pass; XLA drops its unused logits)."""
    _, created = apply({"params": params}, jnp.zeros((rows, length), jnp.int32))
    return _constrain_cache(created["cache"])


def _step_fn(apply, params) -> StepFn:
    """Feeds one token per row at the cache index; returns next-position logits and cache."""

    def step(cache, tokens):
        logits, mutated = apply({"params": params, "cache": cache}, tokens[:, None])
        return logits[:, -1].astype(jnp.float32), _constrain_cache(mutated["cache"])

    return step


def _is_kv(path) -> bool:
    """Whether a cache leaf holds per-row keys or values (the rest is shared by all rows)."""
    name = getattr(path[-1], "key", None)
    return name in ("cached_key", "cached_value")


def _map_cache_rows(fn: Callable[[jax.Array, int], jax.Array], cache):
    """Applies fn(leaf, batch_axis) to the per-row cache leaves (keys and values).

    Their layout is [..., batch, length, kv_heads, head_dim] (a leading layer axis when
    layers are scanned); positions and the write index are shared by all rows.
    """
    return jax.tree_util.tree_map_with_path(
        lambda path, x: fn(x, x.ndim - 4) if _is_kv(path) else x, cache
    )


def _constrain_cache(cache):
    """Keeps cached keys/values sharded like the model's keys/values (rows over the batch axes)."""
    return _map_cache_rows(
        lambda x, axis: constrain(x, ("layers",) * axis + ("batch", "length", "kv_heads", "kv")),
        cache,
    )


# -------------------------------------------------------------------------------- the loop


def _run_loop(
    step: StepFn, cache, prompt, *, start: int, config: DecodeConfig, rng, vocab_size: int
) -> DecodeResult:
    """Dispatches to the beam or the one-sequence-per-row loop."""
    forbidden = np.zeros((vocab_size,), bool)
    forbidden[list(config.forbidden_ids)] = True
    if config.method == "beam":
        return _beam_loop(step, cache, prompt, start, config, jnp.asarray(forbidden))
    return _token_loop(step, cache, prompt, start, config, jnp.asarray(forbidden), rng)


def _prompt_token(prompt: jax.Array, pos: jax.Array) -> jax.Array:
    """[B] prompt token at position `pos` (clipped; only read while pos < the row's length)."""
    column = jnp.minimum(pos, prompt.shape[1] - 1)
    return jax.lax.dynamic_index_in_dim(prompt, column, axis=1, keepdims=False)


def _filter_logits(logits: jax.Array, config: DecodeConfig) -> jax.Array:
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


def _token_loop(
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
        filtered = _filter_logits(jnp.where(forbidden, -jnp.inf, logits), config)
        return jax.random.categorical(jax.random.fold_in(rng, pos), filtered, axis=-1)

    def body(s: _TokenState) -> _TokenState:
        fed = jnp.where(s.pos < lengths_in, _prompt_token(prompt, s.pos), s.last)
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
    final = jax.lax.while_loop(_keep_going(width + limit - 1), body, init)
    return DecodeResult(final.tokens, final.lengths, final.scores)


def _keep_going(end: int):
    """Loop condition: some row unfinished and the cache not yet full."""
    return lambda s: (s.pos < end) & ~jnp.all(s.done)


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


def _beam_loop(
    step: StepFn, cache, prompt, start: int, config: DecodeConfig, forbidden
) -> DecodeResult:
    """Beam search: keep the K best expansions; EOS (or max length) moves one to 'finished'.

    A finished hypothesis leaves the beam (the beam shrinks), so num_beams=1 is exactly
    greedy. Finished hypotheses compete on sum of log-probs / length_normalizer(length); a
    row stops when no alive beam can still beat its best finished one (log-probs are <= 0, so
    the bound is the best alive sum over the largest normaliser still reachable).
    """
    rows, width = prompt.shape
    beams, limit, alpha = config.num_beams, config.max_decode_length, config.length_penalty
    lengths_in = prompt_lengths(prompt)
    columns = jnp.arange(limit, dtype=jnp.int32)
    slots = jnp.arange(beams, dtype=jnp.int32)
    row_offsets = jnp.arange(rows, dtype=jnp.int32)[:, None] * beams

    def body(s: _BeamState) -> _BeamState:
        fed = jnp.where(
            (s.pos < lengths_in)[:, None], _prompt_token(prompt, s.pos)[:, None], s.last
        )
        logits, cache = step(s.cache, fed.reshape(-1))
        log_probs = jax.nn.log_softmax(logits, axis=-1).reshape(rows, beams, -1)
        vocab = log_probs.shape[-1]
        log_probs = jnp.where(forbidden, -jnp.inf, log_probs)
        generated = s.pos + 1 - lengths_in
        expanding = (generated >= 0) & ~s.done  # [B]

        candidates = (s.alive_scores[:, :, None] + log_probs).reshape(rows, beams * vocab)
        top_scores, top_index = jax.lax.top_k(candidates, beams)
        parent, token = top_index // vocab, (top_index % vocab).astype(jnp.int32)
        parent_tokens = jnp.take_along_axis(s.alive_tokens, parent[:, :, None], axis=1)
        new_tokens = jnp.where(
            columns == generated[:, None, None], token[:, :, None], parent_tokens
        )

        finishing = (token == config.eos_id) | (generated[:, None] >= limit - 1)
        normalised = top_scores / length_normalizer(generated + 1, alpha)[:, None]
        finished_scores = jnp.where(finishing & expanding[:, None], normalised, -jnp.inf)
        pick = jnp.argmax(finished_scores, axis=1)
        pick_score = jnp.take_along_axis(finished_scores, pick[:, None], axis=1)[:, 0]
        better = pick_score > s.best_scores
        pick_tokens = jnp.take_along_axis(new_tokens, pick[:, None, None], axis=1)[:, 0]

        keep = expanding[:, None]
        alive_scores = jnp.where(keep, jnp.where(finishing, -jnp.inf, top_scores), s.alive_scores)
        parent = jnp.where(keep, parent, slots)
        cache = _map_cache_rows(
            lambda x, axis: jnp.take(x, (row_offsets + parent).reshape(-1), axis=axis), cache
        )
        # Descendants are at least one token longer and never score above their parent's sum.
        reachable = jnp.maximum(
            length_normalizer(generated + 2, alpha), length_normalizer(limit, alpha)
        )
        bound = jnp.max(alive_scores, axis=1) / reachable
        best_scores = jnp.where(better, pick_score, s.best_scores)
        stop = expanding & ((bound <= best_scores) | (generated >= limit - 1))
        return _BeamState(
            pos=s.pos + 1,
            last=jnp.where(keep, token, fed),
            cache=_constrain_cache(cache),
            alive_tokens=jnp.where(keep[:, :, None], new_tokens, s.alive_tokens),
            alive_scores=alive_scores,
            best_tokens=jnp.where(better[:, None], pick_tokens, s.best_tokens),
            best_lengths=jnp.where(better, generated + 1, s.best_lengths),
            best_scores=best_scores,
            done=s.done | stop,
        )

    # One live beam per row at first, so the first expansion does not repeat itself K times.
    first_alive = jnp.where(slots == 0, 0.0, -jnp.inf).astype(jnp.float32)
    init = _BeamState(
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
    final = jax.lax.while_loop(_keep_going(width + limit - 1), body, init)
    return DecodeResult(final.best_tokens, final.best_lengths, final.best_scores)
