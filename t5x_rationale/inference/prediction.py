"""Batched, sharded prediction over task examples: the engine behind evaluate and infer.

Examples are dicts with `inputs` token ids (from `data.examples.load_examples`: a seqio
task split, unshuffled and unpacked); `vocabulary` is any object with `decode(ids)`. Inputs
longer than `input_length` are truncated and counted. For a decoder-only model the prompt is
`[0] + inputs`, as the training converter feeds it (the decoder's inputs are its targets
shifted right with 0).
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

    def _rows(self, examples: Sequence[dict]) -> tuple[np.ndarray, int]:
        """[n, input_length] right-padded input rows and the number of truncated inputs."""
        width = self.input_length
        rows = np.zeros((len(examples), width), np.int32)
        truncated = 0
        for i, ex in enumerate(examples):
            tokens = np.asarray(ex["inputs"], np.int32)
            if not self.encoder_decoder:
                tokens = np.concatenate([[0], tokens])
            truncated += len(tokens) > width
            tokens = tokens[:width]
            rows[i, : len(tokens)] = tokens
        return rows, truncated

    def predict(self, examples: Sequence[dict], rng: Optional[jax.Array] = None) -> Predictions:
        """Decoded text for every example (EOS and what follows removed)."""
        rows, truncated = self._rows(examples)
        key = "encoder_input_tokens" if self.encoder_decoder else "decoder_prompt_tokens"
        host = self.partitioner.host_rows(self.batch_size)
        texts: list[str] = []
        rng = jax.random.PRNGKey(0) if rng is None else rng
        for start in range(0, len(rows), self.batch_size):
            chunk = rows[start : start + self.batch_size]
            padded = np.concatenate([chunk, np.repeat(chunk[:1], self.batch_size - len(chunk), 0)])
            batch = self.partitioner.host_batch_to_global({key: padded[host]})
            with self.partitioner.context():
                if self.thoughts is not None:
                    result = generate_with_thoughts(
                        self.model_config,
                        self.params,
                        batch[key],
                        self.thoughts,
                        rng=jax.random.fold_in(rng, start),
                    )
                else:
                    result = decode(
                        self.model,
                        self.params,
                        batch,
                        self.decode_config,
                        rng=jax.random.fold_in(rng, start),
                    )
            tokens = np.asarray(multihost_utils.process_allgather(result.tokens, tiled=True))
            texts += [self._detokenize(t) for t in tokens[: len(chunk)]]
        return Predictions(texts, truncated)

    def _detokenize(self, tokens: np.ndarray) -> str:
        eos = np.flatnonzero(tokens == self.decode_config.eos_id)
        tokens = tokens[: eos[0]] if len(eos) else tokens
        return self.vocabulary.decode([int(t) for t in tokens if t > 0])
