"""How fast the training input pipeline delivers batches to one host (`bench_pipeline`).

A multi-host run has one `TaskStream` per process. Here the streams of N hosts are built in
one process, one after the other, with the `process_index` / `process_count` and host rows
each real host would get, and each is timed alone: what one host's CPU pays to feed its
devices. With `host_sharding="rows"` every host runs the whole global pipeline and keeps
1/N of each batch; with `"source"` it reads and tokenizes only its 1/N of the examples.

Counts are of what the host keeps: examples (packed segments), tokens (non-padding entries of
`encoder_input_tokens` and `decoder_target_tokens`) and slots (all entries of those arrays,
padding included, which is what a train step computes on). Rates are per wall second and per
CPU second of this process (all of TensorFlow's threads), the second being what one core
delivers.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable, Optional

import numpy as np
import seqio

from t5x_rationale.data.pipeline import StreamSpec, TaskStream

TOKEN_FEATURES = ("encoder_input_tokens", "decoder_target_tokens")


def batch_counts(batch: dict[str, np.ndarray]) -> dict[str, int]:
    """Examples, non-padding tokens and slots of one (host-local) batch."""
    tokens = slots = 0
    for name in TOKEN_FEATURES:
        if name in batch:
            tokens += int(np.count_nonzero(batch[name]))
            slots += int(batch[name].size)
    if "decoder_segment_ids" in batch:
        seg = batch["decoder_segment_ids"]
        examples = sum(len(np.unique(row[row > 0])) for row in seg)
    else:
        examples = int((batch["decoder_target_tokens"] > 0).any(axis=1).sum())
    return {"examples": int(examples), "tokens": tokens, "slots": slots}


def host_rows(batch_size: int, process_index: int, process_count: int) -> slice:
    """The contiguous rows of a global batch that host `process_index` of `process_count`
    keeps (what `Partitioner.host_rows` gives a data-parallel mesh)."""
    if batch_size % process_count:
        raise ValueError(f"batch size {batch_size} is not divisible by {process_count} hosts")
    rows = batch_size // process_count
    return slice(process_index * rows, (process_index + 1) * rows)


@dataclasses.dataclass
class HostRate:
    """One simulated host's measurement: counts over the timed batches and their time."""

    host_sharding: str
    process_index: int
    process_count: int
    batches: int
    startup_s: float  # building the stream and the untimed warm-up batches
    seconds: float  # wall time of the timed batches
    cpu_seconds: float  # this process's CPU time over the same batches
    examples: int
    tokens: int
    slots: int

    def rates(self) -> dict[str, float]:
        """Per wall second (`*_per_s`) and per CPU second (`*_per_cpu_s`)."""
        out = {}
        for name in ("examples", "tokens", "slots"):
            out[f"{name}_per_s"] = getattr(self, name) / self.seconds
            out[f"{name}_per_cpu_s"] = getattr(self, name) / self.cpu_seconds
        return out

    def row(self) -> dict:
        return dict(dataclasses.asdict(self), **self.rates())


def measure_host(
    spec: StreamSpec,
    converter: seqio.FeatureConverter,
    *,
    process_index: int,
    process_count: int,
    batches: int,
    warmup: int = 1,
    on_batch: Optional[Callable[[dict], None]] = None,
) -> HostRate:
    """Times `batches` batches of one host's stream after `warmup` untimed ones.

    `on_batch` sees every timed batch (the host's rows), for checks.
    """
    if batches <= 0 or warmup < 0:
        raise ValueError(f"need batches > 0 and warmup >= 0, got {batches}, {warmup}")
    start = time.perf_counter()
    stream = TaskStream(
        spec,
        converter,
        host_rows=host_rows(spec.batch_size, process_index, process_count),
        process_index=process_index,
        process_count=process_count,
    )
    for _ in range(warmup):
        next(stream)
    startup = time.perf_counter() - start
    # Only the stream is timed; the batches are counted afterwards. The stream's prefetch
    # buffers are full at the start and again at the end, so in steady state the window
    # holds the work of the batches it takes.
    wall, cpu = time.perf_counter(), time.process_time()
    taken = [next(stream) for _ in range(batches)]
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    totals = {"examples": 0, "tokens": 0, "slots": 0}
    for batch in taken:
        for name, value in batch_counts(batch).items():
            totals[name] += value
        if on_batch is not None:
            on_batch(batch)
    return HostRate(
        host_sharding=spec.host_sharding,
        process_index=process_index,
        process_count=process_count,
        batches=batches,
        startup_s=startup,
        seconds=wall,
        cpu_seconds=cpu,
        **totals,
    )


def measure_hosts(
    spec: StreamSpec,
    converter: seqio.FeatureConverter,
    *,
    process_count: int,
    batches: int,
    warmup: int = 1,
    hosts: Optional[list[int]] = None,
) -> list[HostRate]:
    """`measure_host` for each simulated host of `process_count` (all, or those in `hosts`)."""
    indices = range(process_count) if hosts is None else hosts
    return [
        measure_host(
            spec,
            converter,
            process_index=i,
            process_count=process_count,
            batches=batches,
            warmup=warmup,
        )
        for i in indices
    ]
