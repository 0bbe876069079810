"""Autoregressive decoding with the KV cache: greedy, sampling and beam search.

One jitted program per (model, config, prefill length, mesh/rules context): the params are
an argument, the loop is a `jax.lax.while_loop` that stops once every row has finished.

Encoder-decoder: encode once, then feed the decoder token by token starting from token 0, or
from `decoder_prompt_tokens` [B, P] when given: right-padded decoder prompts that start with 0
and force the first target tokens (a forced prefix, fed by the same teacher forcing as a
decoder-only prompt; the output holds what follows it).
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

This module is the entry point and the model adapters; the pieces live beside it:
`decode_config` (config, result, shared helpers), `decode_cache` (the KV cache),
`token_loop` (greedy and sampling) and `beam_search`.
"""

from __future__ import annotations

import functools
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from t5x_rationale.architectures.axes import constrain
from t5x_rationale.inference.beam_search import beam_loop
from t5x_rationale.inference.decode_config import (
    METHODS,
    DecodeConfig,
    DecodeResult,
    StepFn,
    length_normalizer,
    prompt_lengths,
)
from t5x_rationale.inference.kv_cache import map_cache_rows, new_cache, step_fn
from t5x_rationale.inference.token_loop import token_loop

__all__ = [
    "METHODS",
    "DecodeConfig",
    "DecodeResult",
    "StepFn",
    "decode",
    "length_normalizer",
    "prompt_lengths",
]

# The beam loop alone, under the name tests/test_decoding.py drives it by.
_beam_loop = beam_loop

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
        [B, P] right-padded with 0 (decoder-only). An encoder-decoder batch may carry
        `decoder_prompt_tokens` too: 0 then the forced target prefix, right-padded.
        `decoder_prompt_lengths` [B], when given, are the prompts' lengths; without it a
        prompt ends at its last non-zero token, which is wrong where id 0 is a text token
        (byte-level BPE vocabularies) and the prompt ends with it.
      config: the decoding method and its settings.
      rng: a PRNG key; required for sampling.

    Call inside `Partitioner.context()` (mesh + logical rules) to decode with sharded params;
    rows are then split over ('data', 'fsdp') when the batch size allows it.

    Decoder-only batches cost one small host sync: the shortest prompt length sets the
    static prefill width, so each distinct shortest length compiles its own program.
    """
    fn, inputs, rng = _program(model, batch, config, rng)
    return fn(params, *inputs, rng)


def lower_decode(model: nn.Module, params: Any, batch, config: DecodeConfig, *, rng=None):
    """The `jax.stages.Lowered` program `decode` runs for these arguments (for profiling)."""
    fn, inputs, rng = _program(model, batch, config, rng)
    return fn.lower(params, *inputs, rng)


def _program(model: nn.Module, batch: dict[str, Any], config: DecodeConfig, rng):
    """(jitted decoder, its token inputs, rng) for this model, batch and config."""
    config.check_vocab(model.config.vocab_size)
    if config.method == "sample" and rng is None:
        raise ValueError("method='sample' needs an rng key")
    rng = jax.random.PRNGKey(0) if rng is None else rng
    architecture = model.config.architecture
    if architecture == "encoder_decoder":
        tokens = _required(batch, "encoder_input_tokens")
        if "decoder_prompt_tokens" in batch:
            prompt = _required(batch, "decoder_prompt_tokens")
            inputs = (tokens, prompt, _lengths(batch, prompt))
        else:
            rows = np.shape(tokens)[0]
            inputs = (tokens, np.zeros((rows, 1), np.int32), np.ones((rows,), np.int32))
        prefill = 0
    elif architecture in ("decoder", "quiet_star"):  # a Quiet-STaR model decodes as its base LM
        prompt = _required(batch, "decoder_prompt_tokens")
        inputs = (prompt, _lengths(batch, prompt))
        prefill = int(_shortest(inputs[1])) - 1
    else:
        raise ValueError(f"unknown architecture {architecture!r}")
    return _compiled(model, config, prefill, _context_key()), inputs, rng


def _lengths(batch: dict[str, Any], prompt) -> jax.Array:
    """[B] prompt lengths: `decoder_prompt_lengths` checked to fit the prompt, else inferred."""
    if "decoder_prompt_lengths" not in batch:
        return _inferred_lengths(prompt)
    lengths = batch["decoder_prompt_lengths"]
    rows, width = np.shape(prompt)
    if np.shape(lengths) != (rows,):
        raise ValueError(
            f"batch['decoder_prompt_lengths'] must be [{rows}], got shape {np.shape(lengths)}"
        )
    if isinstance(lengths, np.ndarray) and not ((lengths >= 1) & (lengths <= width)).all():
        raise ValueError(f"batch['decoder_prompt_lengths'] must lie in [1, {width}]: {lengths}")
    return lengths


_inferred_lengths = jax.jit(prompt_lengths)


@jax.jit
def _shortest(lengths: jax.Array) -> jax.Array:
    """Scalar length of the shortest prompt (read on the host: it sets the prefill width)."""
    return jnp.min(lengths)


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
    model, config: DecodeConfig, params, encoder_tokens, prompt, lengths, rng
) -> DecodeResult:
    """Encodes once, then runs the loop from each row's decoder prompt (0, or 0 + a forced
    prefix), fed token by token."""
    encoder_tokens = constrain(encoder_tokens, ("batch", "length"))
    prompt = constrain(prompt.astype(jnp.int32), ("batch", "length"))
    lengths = constrain(jnp.asarray(lengths, jnp.int32), ("batch",))
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

    # The loop feeds positions 0 .. P + max_decode_length - 2.
    cache = new_cache(apply, params, rows * copies, prompt.shape[1] - 1 + config.max_decode_length)
    return _run_loop(
        step_fn(apply, params),
        cache,
        prompt,
        lengths,
        start=0,
        config=config,
        rng=rng,
        vocab_size=model.config.vocab_size,
    )


def _decode_decoder_only(
    model, config: DecodeConfig, prefill: int, params, prompt, lengths, rng
) -> DecodeResult:
    """Prefills the shared prompt prefix, then runs the loop (beams copy the prefilled cache)."""
    prompt = constrain(prompt.astype(jnp.int32), ("batch", "length"))
    lengths = constrain(jnp.asarray(lengths, jnp.int32), ("batch",))
    rows, prompt_width = prompt.shape

    def apply(variables, tokens):
        return model.apply(variables, tokens, decode=True, mutable=["cache"])

    cache = new_cache(apply, params, rows, prompt_width + config.max_decode_length)
    if prefill > 0:
        _, mutated = apply({"params": params, "cache": cache}, prompt[:, :prefill])
        cache = mutated["cache"]
    if config.method == "beam":
        cache = map_cache_rows(lambda x, axis: jnp.repeat(x, config.num_beams, axis=axis), cache)
    return _run_loop(
        step_fn(apply, params),
        cache,
        prompt,
        lengths,
        start=prefill,
        config=config,
        rng=rng,
        vocab_size=model.config.vocab_size,
    )


# --------------------------------------------------------------------------- loop dispatch


def _run_loop(
    step: StepFn, cache, prompt, lengths, *, start: int, config: DecodeConfig, rng, vocab_size: int
) -> DecodeResult:
    """Dispatches to the beam or the one-sequence-per-row loop."""
    forbidden = np.zeros((vocab_size,), bool)
    forbidden[list(config.forbidden_ids)] = True
    if config.method == "beam":
        return beam_loop(step, cache, prompt, lengths, start, config, jnp.asarray(forbidden))
    return token_loop(step, cache, prompt, lengths, start, config, jnp.asarray(forbidden), rng)
