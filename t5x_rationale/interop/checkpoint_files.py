"""What `import_hf` writes: an orbax checkpoint holding only params (what `train.init_from`,
`train.teacher_checkpoint` and `evaluate.checkpoint_path` read) and the gin model file that
rebuilds the config (which `train` writes for its run too)."""

from __future__ import annotations

import dataclasses
from typing import Any

import flax
import jax

from t5x_rationale.architectures.configs import DecoderConfig
from t5x_rationale.architectures.quiet_star_lm import QuietStarConfig
from t5x_rationale.runtime.checkpoints import Checkpointer


@flax.struct.dataclass
class ParamsOnly:
    """A train state's `params` and nothing else (saved at step 0)."""

    params: Any


def save_params(directory: str, params: Any) -> None:
    """Writes `params` as step 0 of a checkpoint directory (synchronously), the largest
    param's worth of bytes in flight at a time, so the write's buffers stay near the largest
    param, not the model. Orbax's default hands every array to TensorStore at once: importing
    a 1.47B-param float32 model (5.9 GB, largest tensor 262 MB) then peaked 3.4 GB above its
    params, against 0.9 GB with this limit (`bench_import`; 0.4 GB with one malloc arena)."""
    largest = max(leaf.nbytes for leaf in jax.tree.leaves(params))
    with Checkpointer(
        directory, keep=None, async_save=False, save_concurrent_bytes=largest + 1
    ) as checkpointer:
        checkpointer.save(0, ParamsOnly(params), {}, force=True)
        checkpointer.wait()


def gin_model_file(config, source: str) -> str:
    """gin lines that rebuild `config` exactly: a base preset of the same architecture with
    every field set (and a Quiet-STaR model's thought settings)."""
    thinking = isinstance(config, QuietStarConfig)
    model = config.decoder if thinking else config
    base = "decoder-tiny" if isinstance(model, DecoderConfig) else "t5-tiny"
    lines = [f"# The model of {source}.", f"model_config.preset = '{base}'"]
    for field in dataclasses.fields(model):
        lines.append(f"model_config.{field.name} = {_gin_value(getattr(model, field.name))}")
    if thinking:
        lines.append("quiet_star_config.decoder = @model_config()")
        for name in ("thought_init_ids", "thought_token_ids", "thought_scale", "mixing_sigmoid"):
            lines.append(f"quiet_star_config.{name} = {_gin_value(getattr(config, name))}")
    return "\n".join(lines) + "\n"


def _gin_value(value: Any) -> str:
    if isinstance(value, tuple):
        return "(" + "".join(f"{_gin_value(v)}, " for v in value) + ")"
    return repr(value)
