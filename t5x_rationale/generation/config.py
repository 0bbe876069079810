"""What a generation run samples, and the record of it a manifest keeps to refuse mixed resumes."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any, Sequence

from t5x_rationale.inference.decoding import DecodeConfig


@dataclasses.dataclass(frozen=True)
class GenerationConfig:
    """How to sample a list of prompts into output shards.

    Attributes:
      decode: the decoding method ('sample' or 'greedy'), output length and sampling settings.
      num_samples: samples per prompt.
      batch_size: global rows per decode call (divisible by the mesh's data x fsdp).
      input_length: prompt token limit (with EOS, and the leading 0 of a decoder-only prompt).
      shard_size: prompts per output shard.
      seed: root of every sampling key.
      skip_long_prompts: count and skip prompts over `input_length` instead of raising.
      bucket: sort each shard's prompts by length so a decode batch holds similar lengths.
      bucket_width: a batch's prompt width is its longest prompt rounded up to a multiple of
        this (capped at `input_length`); without `bucket` every batch is `input_length` wide.
    """

    decode: DecodeConfig
    num_samples: int = 1
    batch_size: int = 32
    input_length: int = 256
    shard_size: int = 256
    seed: int = 0
    skip_long_prompts: bool = False
    bucket: bool = True
    bucket_width: int = 16

    def __post_init__(self):
        if not isinstance(self.decode, DecodeConfig):
            raise TypeError(f"decode must be a DecodeConfig, got {type(self.decode).__name__}")
        if self.decode.method not in ("greedy", "sample"):
            raise ValueError(
                f"generation decodes by 'greedy' or 'sample', not {self.decode.method!r}"
            )
        for name in ("num_samples", "batch_size", "input_length", "shard_size", "bucket_width"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if not isinstance(self.seed, int):
            raise ValueError(f"seed must be an int, got {self.seed!r}")

    def record(self) -> dict[str, Any]:
        """The settings as JSON-ready values (what a resumed run must repeat exactly)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))


def prompts_fingerprint(prompts: Sequence[dict]) -> str:
    """sha256 of the prompt rows (ids, texts and passthrough fields, in order)."""
    digest = hashlib.sha256()
    for row in prompts:
        digest.update(json.dumps(row, sort_keys=True, ensure_ascii=False).encode("utf-8"))
        digest.update(b"\n")
    return digest.hexdigest()


def model_record(model_config) -> dict[str, Any]:
    """A model config as JSON-ready values (dataclass fields; anything else by its repr)."""
    if dataclasses.is_dataclass(model_config):
        return json.loads(json.dumps(dataclasses.asdict(model_config), default=repr))
    return {"repr": repr(model_config)}


def run_record(
    config: GenerationConfig, model_config, checkpoint_step: int, prompts: Sequence[dict]
) -> dict[str, Any]:
    """Everything that fixes a run's outputs: a resume must match it key by key."""
    return {
        "generation": config.record(),
        "model": model_record(model_config),
        "checkpoint_step": int(checkpoint_step),
        "num_prompts": len(prompts),
        "prompts_sha256": prompts_fingerprint(prompts),
    }


def differences(saved: dict[str, Any], current: dict[str, Any], prefix: str = "") -> list[str]:
    """'key: saved -> current' for every leaf that differs between two records."""
    out = []
    for key in sorted(set(saved) | set(current)):
        a, b = saved.get(key, "<absent>"), current.get(key, "<absent>")
        if isinstance(a, dict) and isinstance(b, dict):
            out += differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return out
