"""Resumable streams of NumPy batches from seqio tasks, sharded over hosts.

A `TaskStream` builds `task -> feature converter -> batch` with fixed seeds, so the k-th
batch is a pure function of (task, split, lengths, converter, batch size, seed). Its state is
the number of batches consumed; restoring rebuilds the pipeline and skips that many batches,
so a resumed run sees exactly the batches an uninterrupted one would have.

Hosts read data one of two ways (`host_sharding`):
- `"source"` (the default): each host reads its own shard of the source (`seqio.ShardInfo`)
  and batches its rows locally, so a host's cost stays flat as hosts are added; batches
  depend on the host count, so a run resumes only on as many hosts as wrote it.
- `"rows"`: every host runs the same global pipeline and keeps its own rows of each global
  batch. Global batches are identical for any host count (resume on another topology, or
  compare against one process exactly), but each host pays for the whole stream: about
  0.11 x N CPU cores per GPU at decoder-1b on N hosts (`bench_pipeline`, docs/performance.md).
With one process the two are the same stream, and a state of either resumes under the other.

Truncation flags from the converters are popped from each batch and counted on the host.
"""

from __future__ import annotations

import dataclasses
from typing import Iterator, Mapping, Optional

import numpy as np
import seqio
import tensorflow as tf

from t5x_rationale.data.converters import TRUNCATION_FEATURES
from t5x_rationale.data.quiet_stderr import is_tokenizer_notice, stderr_without

HOST_SHARDING = ("rows", "source")
PASSTHROUGH = ("task_id",)


@dataclasses.dataclass(frozen=True)
class StreamSpec:
    """What a stream reads: everything its batches depend on."""

    mixture_or_task: str
    split: str
    task_feature_lengths: Mapping[str, int]
    batch_size: int  # global batch size
    shuffle: bool = True
    seed: int = 0
    num_epochs: Optional[int] = None  # None: repeat forever
    host_sharding: str = "source"

    def __post_init__(self):
        if self.host_sharding not in HOST_SHARDING:
            raise ValueError(
                f"host_sharding must be one of {HOST_SHARDING}, got {self.host_sharding!r}"
            )
        if not isinstance(self.batch_size, int) or self.batch_size <= 0:
            raise ValueError(f"batch_size must be a positive integer, got {self.batch_size!r}")


class TaskStream(Iterator[dict]):
    """Host-local NumPy batches of a seqio task or mixture; resumable by position.

    Args:
      spec: what to read.
      converter: a seqio FeatureConverter (`converters.py`).
      host_rows: this host's rows `slice` of each global batch (`Partitioner.host_rows`).
      process_index, process_count: this host and the host count (for `"source"` sharding).
    """

    def __init__(
        self,
        spec: StreamSpec,
        converter: seqio.FeatureConverter,
        *,
        host_rows: slice,
        process_index: int = 0,
        process_count: int = 1,
    ):
        self.spec, self.converter, self.host_rows = spec, converter, host_rows
        self.process_index, self.process_count = process_index, process_count
        self.position = 0
        self.examples = 0
        self.truncated_examples = 0
        self._iterator = None
        if spec.host_sharding == "source" and spec.batch_size % process_count:
            raise ValueError(
                f"batch_size {spec.batch_size} is not divisible by {process_count} hosts"
            )

    # ------------------------------------------------------------------ building

    def _dataset(self) -> tf.data.Dataset:
        spec = self.spec
        source_shard = spec.host_sharding == "source" and self.process_count > 1
        shard_info = (
            seqio.ShardInfo(self.process_index, self.process_count) if source_shard else None
        )
        provider = seqio.get_mixture_or_task(spec.mixture_or_task)
        # A mixture keeps only output features unless told: keep the per-task id.
        extra = {"passthrough_features": PASSTHROUGH} if isinstance(provider, seqio.Mixture) else {}
        ds = provider.get_dataset(
            sequence_length=dict(spec.task_feature_lengths),
            split=spec.split,
            shuffle=spec.shuffle,
            seed=spec.seed,
            num_epochs=spec.num_epochs,
            shard_info=shard_info,
            use_cached=False,
            trim_output_features=False,
            **extra,
        )
        ds = self.converter(ds, dict(spec.task_feature_lengths))
        rows = spec.batch_size // self.process_count if source_shard else spec.batch_size
        ds = ds.batch(rows, drop_remainder=spec.num_epochs is None)
        options = tf.data.Options()
        options.deterministic = True
        return ds.with_options(options).skip(self.position).prefetch(2)

    def _next_batch(self) -> dict[str, np.ndarray]:
        if self._iterator is not None:
            return next(self._iterator)
        with stderr_without(is_tokenizer_notice):  # the first batch loads the tokenizer op
            self._iterator = self._dataset().as_numpy_iterator()
            return next(self._iterator)

    # ------------------------------------------------------------------ iteration

    def __next__(self) -> dict[str, np.ndarray]:
        batch = self._next_batch()
        self.position += 1
        self._count(batch)
        if _effective_sharding(self.spec.host_sharding, self.process_count) == "rows":
            batch = {k: v[self.host_rows] for k, v in batch.items()}
        return batch

    def _count(self, batch: dict) -> None:
        """Pops truncation flags and counts examples (packed segments) and truncated ones."""
        for name in TRUNCATION_FEATURES:
            if name in batch:
                self.truncated_examples += int(batch.pop(name).sum())
        if "decoder_segment_ids" in batch:
            seg = batch["decoder_segment_ids"]
            self.examples += int(sum(len(np.unique(row[row > 0])) for row in seg))
        elif "candidate_mask" in batch:
            self.examples += len(batch["candidate_mask"])
        else:
            self.examples += int((batch["decoder_target_tokens"] > 0).any(axis=1).sum())

    def stats(self) -> dict[str, float]:
        """Cumulative counts since the stream was created (this host's view of the stream)."""
        return {
            "data/examples": float(self.examples),
            "data/truncated_examples": float(self.truncated_examples),
        }

    # ------------------------------------------------------------------ state

    def get_state(self) -> dict:
        return {
            "position": self.position,
            "seed": self.spec.seed,
            "task": self.spec.mixture_or_task,
            "split": self.spec.split,
            "process_count": self.process_count,
            "host_sharding": self.spec.host_sharding,
        }

    def set_state(self, state: dict) -> None:
        """Continues at `state['position']`; refuses a state from a different stream."""
        mine = self.get_state()
        for key in ("seed", "task", "split"):
            if key in state and state[key] != mine[key]:
                raise ValueError(
                    f"checkpointed data stream has {key}={state[key]!r}, this run reads "
                    f"{key}={mine[key]!r}; refusing to resume a different stream"
                )
        saved_hosts = state.get("process_count", self.process_count)
        saved = _effective_sharding(state.get("host_sharding", mine["host_sharding"]), saved_hosts)
        current = _effective_sharding(self.spec.host_sharding, self.process_count)
        if saved != current:
            raise ValueError(
                f"checkpointed data stream has host_sharding={saved!r} ({saved_hosts} hosts), "
                f"this run reads host_sharding={current!r} ({self.process_count} hosts); "
                "refusing to resume a different stream"
            )
        if current == "source" and saved_hosts != self.process_count:
            raise ValueError(
                f"checkpoint was written by {saved_hosts} hosts reading source shards; this run "
                f"has {self.process_count} (host_sharding='rows' reads the same batches on any "
                "host count)"
            )
        self.position = int(state["position"])
        self._iterator = None


def _effective_sharding(host_sharding: str, process_count: int) -> str:
    """One process reads the whole source either way: the same stream as `"rows"`."""
    return host_sharding if process_count > 1 else "rows"
