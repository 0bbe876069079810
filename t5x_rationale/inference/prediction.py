"""Batched, sharded prediction over task examples: the engine behind evaluate and infer.

Examples are dicts with `inputs` token ids (from `data.examples.load_examples`: a seqio
task split, unshuffled and unpacked); `vocabulary` is any object with `decode(ids)`. Inputs
longer than `input_length` are truncated and counted. For a decoder-only model the prompt is
`[0] + inputs`, as the training converter feeds it (the decoder's inputs are its targets
shifted right with 0). A forced output prefix (`predict(prefixes=...)`) follows that prompt, or
is an encoder-decoder's decoder prompt `[0] + prefix`; it is not truncated.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import jax
import numpy as np
from jax.experimental import multihost_utils

from t5x_rationale.architectures import build_model
from t5x_rationale.inference.decoding import DecodeConfig, decode
from t5x_rationale.inference.thought_generation import (
    ThoughtDecodeConfig,
    from_decode_config,
    generate_with_thoughts,
)
from t5x_rationale.runtime.checkpoints import restore_params
from t5x_rationale.runtime.partitioning import Partitioner
from t5x_rationale.runtime.trainer import abstract_params


@dataclasses.dataclass
class Predictions:
    """Decoded texts in example order, and how many inputs were truncated."""

    texts: list[str]
    truncated_inputs: int


class Predictor:
    """Restores a model's params from a checkpoint and decodes batches of examples.

    Args:
      model_config: the architecture config the checkpoint was trained with.
      checkpoint_path: a run's `checkpoints/` directory (latest step) or one step directory.
      partitioner: mesh + rules; params are restored sharded onto it.
      vocabulary: detokenizes outputs.
      decode_config: how to decode.
      batch_size: global rows per decode call (the last batch is padded).
      input_length: encoder input / prompt length; longer inputs are truncated and counted.
      thoughts: a Quiet-STaR model generates with a thought before every token
        (`thought_generation`): these settings, with length, eos, forbidden ids and token
        temperature taken from `decode_config` (default `ThoughtDecodeConfig()`).
    """

    def __init__(
        self,
        model_config,
        checkpoint_path: str,
        partitioner: Partitioner,
        vocabulary,
        decode_config: DecodeConfig,
        *,
        batch_size: int,
        input_length: int,
        thoughts: Optional[ThoughtDecodeConfig] = None,
    ):
        partitioner.check_global_batch_size(batch_size)
        thinks = model_config.architecture == "quiet_star"
        if thoughts is not None and not thinks:
            raise ValueError(
                f"thought generation needs a Quiet-STaR model, got a {model_config.architecture}"
            )
        self.thoughts = (
            from_decode_config(decode_config, thoughts or ThoughtDecodeConfig()) if thinks else None
        )
        self.model_config, self.partitioner, self.vocabulary = model_config, partitioner, vocabulary
        self.decode_config, self.batch_size, self.input_length = (
            decode_config,
            batch_size,
            input_length,
        )
        self.encoder_decoder = model_config.architecture == "encoder_decoder"
        self.model = build_model(model_config)
        self.params, self.step = restore_params(
            checkpoint_path, abstract_params(self.model, partitioner, self._shape_batch())
        )

    def _shape_batch(self) -> dict[str, np.ndarray]:
        ones = np.ones((self.batch_size, self.input_length), np.int32)
        if self.encoder_decoder:
            return {"encoder_input_tokens": ones, "decoder_input_tokens": ones[:, :1]}
        return {"decoder_input_tokens": ones}

    def _prompts(self, examples: Sequence[dict]) -> tuple[list[np.ndarray], int]:
        """Each example's encoder input / decoder-only prompt (truncated), and how many were cut."""
        prompts, truncated = [], 0
        for ex in examples:
            tokens = np.asarray(ex["inputs"], np.int32)
            if not self.encoder_decoder:
                tokens = np.concatenate([[0], tokens])
            truncated += len(tokens) > self.input_length
            prompts.append(tokens[: self.input_length])
        return prompts, truncated

    def _rows(
        self, examples: Sequence[dict], prefixes: Optional[Sequence[Sequence[int]]]
    ) -> tuple[dict[str, np.ndarray], int]:
        """The model's right-padded input arrays for every example, and the truncated count.

        A forced prefix follows the prompt of a decoder-only model; an encoder-decoder gets
        it as its decoder prompt `[0] + prefix`.
        """
        prompts, truncated = self._prompts(examples)
        if prefixes is None:
            if self.encoder_decoder:
                return {
                    "encoder_input_tokens": _right_padded(prompts, self.input_length)
                }, truncated
            return decoder_prompt_rows(prompts, self.input_length), truncated
        if len(prefixes) != len(examples):
            raise ValueError(f"{len(prefixes)} prefixes for {len(examples)} examples")
        forced = [np.asarray(p, np.int32).reshape(-1) for p in prefixes]
        if self.encoder_decoder:
            starts = [np.concatenate([[0], p]).astype(np.int32) for p in forced]
            rows = {"encoder_input_tokens": _right_padded(prompts, self.input_length)}
            return {**rows, **decoder_prompt_rows(starts)}, truncated
        joined = [np.concatenate([t, p]) for t, p in zip(prompts, forced)]
        return decoder_prompt_rows(joined), truncated

    def predict(
        self,
        examples: Sequence[dict],
        rng: Optional[jax.Array] = None,
        *,
        prefixes: Optional[Sequence[Sequence[int]]] = None,
    ) -> Predictions:
        """Decoded text for every example (EOS and what follows removed).

        `prefixes`: token ids forced as the start of each example's output (the model
        continues after them); the returned texts then begin with them.
        """
        rows, truncated = self._rows(examples, prefixes)
        texts: list[str] = []
        rng = jax.random.PRNGKey(0) if rng is None else rng
        for start in range(0, len(examples), self.batch_size):
            chunk = {k: v[start : start + self.batch_size] for k, v in rows.items()}
            tokens = self.decode_rows(chunk, jax.random.fold_in(rng, start))
            forced = (
                [()] * len(tokens) if prefixes is None else prefixes[start : start + len(tokens)]
            )
            texts += [self.detokenize(t, f) for t, f in zip(tokens, forced)]
        return Predictions(texts, truncated)

    def decode_rows(self, rows: dict[str, np.ndarray], rng: jax.Array) -> np.ndarray:
        """Output tokens [n, max_decode_length] of n <= batch_size global input rows.

        Every process passes the same rows; the batch is padded to `batch_size` with copies of
        its first row, each process feeds its own rows, and the outputs are gathered back.
        """
        n = len(next(iter(rows.values())))
        if not 0 < n <= self.batch_size:
            raise ValueError(f"{n} rows for a decode batch of {self.batch_size}")
        host = self.partitioner.host_rows(self.batch_size)
        padded = {
            k: np.concatenate([v, np.repeat(v[:1], self.batch_size - n, 0)])[host]
            for k, v in rows.items()
        }
        batch = self.partitioner.host_batch_to_global(padded)
        result = self._decode(batch, rng)
        tokens = np.asarray(multihost_utils.process_allgather(result.tokens, tiled=True))
        return tokens[:n]

    def _decode(self, batch: dict, rng: jax.Array):
        with self.partitioner.context():
            if self.thoughts is not None:
                return generate_with_thoughts(
                    self.model_config,
                    self.params,
                    batch["decoder_prompt_tokens"],
                    self.thoughts,
                    rng=rng,
                    lengths=batch.get("decoder_prompt_lengths"),
                )
            return decode(self.model, self.params, batch, self.decode_config, rng=rng)

    def detokenize(self, tokens: np.ndarray, forced: Sequence[int] = ()) -> str:
        """Text of one output row: the forced prefix, then the tokens up to EOS."""
        eos = np.flatnonzero(tokens == self.decode_config.eos_id)
        tokens = tokens[: eos[0]] if len(eos) else tokens
        return self.vocabulary.decode([int(t) for t in forced] + [int(t) for t in tokens])


def decoder_prompt_rows(prompts: Sequence[np.ndarray], width: Optional[int] = None) -> dict:
    """`decoder_prompt_tokens` [n, width] right-padded with 0 and `decoder_prompt_lengths` [n]:
    the lengths are explicit, since a prompt may end with a text token at id 0."""
    return {
        "decoder_prompt_tokens": _right_padded(prompts, width),
        "decoder_prompt_lengths": np.array([max(len(p), 1) for p in prompts], np.int32),
    }


def _right_padded(rows: Sequence[np.ndarray], width: Optional[int] = None) -> np.ndarray:
    """[n, width] int32 rows right-padded with 0 (width: the longest row by default)."""
    width = max((len(r) for r in rows), default=1) if width is None else width
    out = np.zeros((len(rows), max(width, 1)), np.int32)
    for i, row in enumerate(rows):
        out[i, : len(row)] = row
    return out
