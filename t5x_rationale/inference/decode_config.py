"""What to decode and what comes back, plus the prompt and length helpers both loops share."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

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


def prompt_token(prompt: jax.Array, pos: jax.Array) -> jax.Array:
    """[B] prompt token at position `pos` (clipped; only read while pos < the row's length)."""
    column = jnp.minimum(pos, prompt.shape[1] - 1)
    return jax.lax.dynamic_index_in_dim(prompt, column, axis=1, keepdims=False)


def keep_going(end: int):
    """Loop condition: some row unfinished and the cache not yet full."""
    return lambda s: (s.pos < end) & ~jnp.all(s.done)
