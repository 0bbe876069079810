"""Which prompts go in which shard and decode batch, and how wide each batch is padded.

Everything here is a function of the prompts and the `GenerationConfig` alone (never of the
mesh or the number of processes), which is what makes the sampled tokens independent of them:
a batch's rows and its sampling key are fixed before any device is involved.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from t5x_rationale.generation.config import GenerationConfig
from t5x_rationale.inference.prediction import decoder_prompt_rows

# Keys a generation row writes itself; a prompt's passthrough fields may not use them.
RESERVED_KEYS = ("sample", "text", "num_tokens", "finished")


@dataclasses.dataclass(frozen=True)
class DecodeBatch:
    """One decode call: `rows` are (position in the shard, sample) pairs, `width` the padding."""

    rows: tuple[tuple[int, int], ...]
    width: int


@dataclasses.dataclass(frozen=True)
class Plan:
    """The prompts kept (with their model-input tokens), the ids skipped, and the shards."""

    prompts: list[dict]
    tokens: list[np.ndarray]
    skipped_ids: list[str]
    shard_size: int

    @property
    def num_shards(self) -> int:
        return -(-len(self.prompts) // self.shard_size)

    def shard(self, index: int) -> range:
        """Positions (in `prompts`) of shard `index`'s prompts."""
        start = index * self.shard_size
        return range(start, min(start + self.shard_size, len(self.prompts)))


def check_prompts(prompts: Sequence[dict]) -> list[dict]:
    """The prompt rows with string ids; errors name the row (position and id)."""
    out, seen = [], {}
    for i, row in enumerate(prompts):
        if not isinstance(row, dict):
            raise ValueError(f"prompt {i}: expected a dict, got {type(row).__name__}")
        key = row.get("id")
        if isinstance(key, int) and not isinstance(key, bool):
            key = str(key)
        if not isinstance(key, str) or not key:
            raise ValueError(f"prompt {i}: field 'id' must be a non-empty string, got {key!r}")
        if not isinstance(row.get("prompt"), str):
            raise ValueError(f"prompt {i} (id {key!r}): field 'prompt' must be a string")
        if key in seen:
            raise ValueError(f"prompt {i}: id {key!r} repeats prompt {seen[key]}")
        clash = [k for k in RESERVED_KEYS if k in row]
        if clash:
            raise ValueError(
                f"prompt {i} (id {key!r}): field {clash[0]!r} is written by generation"
            )
        seen[key] = i
        out.append({**row, "id": key})
    if not out:
        raise ValueError("no prompts to generate from")
    return out


def make_plan(
    prompts: Sequence[dict], vocabulary, config: GenerationConfig, *, encoder_decoder: bool
) -> Plan:
    """Tokenizes the prompts (`encode(prompt) + [EOS]`, after a 0 for a decoder-only model) and
    refuses, or with `config.skip_long_prompts` skips, those longer than `input_length`."""
    kept, tokens, skipped = [], [], []
    for i, row in enumerate(check_prompts(prompts)):
        ids = list(vocabulary.encode(row["prompt"])) + [vocabulary.eos_id]
        ids = ids if encoder_decoder else [0] + ids
        if len(ids) > config.input_length:
            if not config.skip_long_prompts:
                raise ValueError(
                    f"prompt {i} (id {row['id']!r}) is {len(ids)} tokens, over input_length "
                    f"{config.input_length} (raise it, or set skip_long_prompts to skip such rows)"
                )
            skipped.append(row["id"])
            continue
        kept.append(row)
        tokens.append(np.asarray(ids, np.int32))
    if not kept:
        raise ValueError(f"all {len(skipped)} prompts are over input_length {config.input_length}")
    return Plan(kept, tokens, skipped, config.shard_size)


def shard_batches(plan: Plan, index: int, config: GenerationConfig) -> list[DecodeBatch]:
    """Shard `index`'s decode batches: its (prompt, sample) rows, length-sorted when bucketing."""
    positions = list(plan.shard(index))
    if config.bucket:
        positions.sort(key=lambda p: (len(plan.tokens[p]), p))
    start = plan.shard(index).start
    pairs = [(p - start, k) for p in positions for k in range(config.num_samples)]
    batches = []
    for b in range(0, len(pairs), config.batch_size):
        chunk = tuple(pairs[b : b + config.batch_size])
        longest = max(len(plan.tokens[start + p]) for p, _ in chunk)
        batches.append(DecodeBatch(chunk, batch_width(longest, config)))
    return batches


def batch_width(longest: int, config: GenerationConfig) -> int:
    """Padded prompt width of a batch whose longest prompt is `longest` tokens."""
    if not config.bucket:
        return config.input_length
    rounded = -(-longest // config.bucket_width) * config.bucket_width
    return min(rounded, config.input_length)


def batch_rows(plan: Plan, shard_start: int, batch: DecodeBatch, encoder_decoder: bool) -> dict:
    """The batch's right-padded prompt arrays, under the model's input names (a decoder's
    with the prompts' lengths)."""
    prompts = [plan.tokens[shard_start + p] for p, _ in batch.rows]
    if not encoder_decoder:
        return decoder_prompt_rows(prompts, batch.width)
    out = np.zeros((len(batch.rows), batch.width), np.int32)
    for i, ids in enumerate(prompts):
        out[i, : len(ids)] = ids
    return {"encoder_input_tokens": out}


def padding_counts(plan: Plan, config: GenerationConfig) -> tuple[int, int]:
    """(padded prompt tokens, total prompt tokens) over every row of every decode batch."""
    padded = total = 0
    for index in range(plan.num_shards):
        start = plan.shard(index).start
        for batch in shard_batches(plan, index, config):
            lengths = [len(plan.tokens[start + p]) for p, _ in batch.rows]
            total += batch.width * len(lengths)
            padded += batch.width * len(lengths) - sum(lengths)
    return padded, total
