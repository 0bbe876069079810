"""Flax Linen architectures: pure modules, no losses, no gin, no data."""

from __future__ import annotations

import numpy as np

from t5x_rationale.architectures.configs import (
    PRESETS,
    DecoderConfig,
    T5Config,
    get_preset,
    resolve_dtype,
)
from t5x_rationale.architectures.decoder import DecoderOnly
from t5x_rationale.architectures.quiet_star_lm import QuietStarConfig, QuietStarLM
from t5x_rationale.architectures.t5 import EncoderDecoder

__all__ = [
    "DecoderConfig",
    "DecoderOnly",
    "EncoderDecoder",
    "PRESETS",
    "QuietStarConfig",
    "QuietStarLM",
    "T5Config",
    "build_model",
    "dummy_batch",
    "get_preset",
    "init_inputs",
    "resolve_dtype",
]


MODELS = {"encoder_decoder": EncoderDecoder, "decoder": DecoderOnly, "quiet_star": QuietStarLM}


def build_model(config: T5Config | DecoderConfig | QuietStarConfig):
    """The Flax module for a config, chosen by its `architecture`."""
    architecture = getattr(config, "architecture", None)
    if architecture not in MODELS:
        raise TypeError(
            f"expected a T5Config, DecoderConfig or QuietStarConfig, got {type(config).__name__}"
        )
    return MODELS[architecture](config)


def model_inputs(batch: dict) -> dict:
    """The subset of a batch that the model's `__call__` takes (targets/weights dropped)."""
    names = (
        "encoder_input_tokens",
        "decoder_input_tokens",
        "encoder_segment_ids",
        "decoder_segment_ids",
        "encoder_positions",
        "decoder_positions",
        "decoder_causal_attention",
    )
    return {k: batch[k] for k in names if k in batch}


def init_inputs(config, batch: dict) -> dict:
    """`model_inputs` for initialising params: a decoder-only model takes only the `decoder_*`
    ones (PINTO's multiple-choice batch also holds its encoder-decoder context)."""
    inputs = model_inputs(batch)
    if config.architecture == "encoder_decoder":
        return inputs
    return {k: v for k, v in inputs.items() if k.startswith("decoder_")}


def dummy_batch(
    config: T5Config | DecoderConfig, batch_size: int, *, target_length: int, input_length: int = 0
) -> dict[str, np.ndarray]:
    """An all-ones batch with the feature names and shapes a train step sees (for init/shapes)."""
    ones = lambda n: np.ones((batch_size, n), np.int32)  # noqa: E731
    batch = {
        "decoder_input_tokens": ones(target_length),
        "decoder_target_tokens": ones(target_length),
        "decoder_loss_weights": ones(target_length).astype(np.float32),
    }
    if config.architecture == "encoder_decoder":
        if input_length <= 0:
            raise ValueError("an encoder-decoder batch needs input_length > 0")
        batch["encoder_input_tokens"] = ones(input_length)
    return batch
