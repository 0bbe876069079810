"""Sampling a whole list of prompts from a checkpoint into resumable JSONL shards.

The sampling key of decode batch b of shard s is `fold_in(fold_in(PRNGKey(seed), s), b)` and
the batch's rows come from `plan.shard_batches` (the shard's prompts and the config only), so
a prompt's samples do not depend on the mesh, the number of processes or where a run was
interrupted. Every process runs every decode call on its rows of the batch
(`Predictor.decode_rows`); process 0 writes the files.
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable, Optional, Sequence

import jax
import numpy as np
from jax.experimental import multihost_utils

from t5x_rationale.generation import plan as planning
from t5x_rationale.generation import shards
from t5x_rationale.generation.config import GenerationConfig, run_record
from t5x_rationale.inference.prediction import Predictor
from t5x_rationale.runtime.partitioning import MeshConfig, Partitioner, create_mesh


def generate_to_shards(
    model_config,
    checkpoint_path: str,
    vocabulary,
    prompts: Sequence[dict],
    out_dir: str,
    config: GenerationConfig,
    partitioner: Optional[Partitioner] = None,
    *,
    stop_after_shards: Optional[int] = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Samples `config.num_samples` outputs per prompt into `out_dir` and returns the summary.

    Args:
      model_config: the architecture config the checkpoint was trained with.
      checkpoint_path: a run's `checkpoints/` directory (latest step) or one step directory.
      vocabulary: `encode(text)`, `decode(ids)` and `eos_id`.
      prompts: `{"id": str, "prompt": str, ...passthrough}` rows; `prompt` is the model's input
        text (EOS is appended; a decoder-only prompt starts with the 0 it was trained with).
      out_dir: gets `shard-00000-of-000NN.jsonl` ..., `manifest.json` and `summary.json`.
      config: what to sample.
      partitioner: the mesh to decode on (default: all devices, data parallel).
      stop_after_shards: return after writing this many shards in this call (an interrupted
        run, for tests and for splitting a job into pieces).

    Returns the summary: prompt, row, skipped and token counts, padding fraction, tokens/s.
    """
    encoder_decoder = model_config.architecture == "encoder_decoder"
    plan = planning.make_plan(prompts, vocabulary, config, encoder_decoder=encoder_decoder)
    partitioner = partitioner or Partitioner(create_mesh(MeshConfig()))
    predictor = Predictor(
        model_config,
        checkpoint_path,
        partitioner,
        vocabulary,
        config.decode,
        batch_size=config.batch_size,
        input_length=config.input_length,
    )
    record = run_record(config, model_config, predictor.step, prompts)
    counts = _plan_counts(plan, config)
    manifest = _start_manifest(
        out_dir, record, shards.new_manifest(record, plan.num_shards, counts)
    )
    writer = jax.process_index() == 0
    first = len(manifest["shards"])
    if first:
        log(f"generation: resuming {out_dir} at shard {first} of {plan.num_shards}")
    started, generated = time.perf_counter(), 0
    for index in range(first, plan.num_shards):
        if stop_after_shards is not None and index - first >= stop_after_shards:
            break
        shard_started = time.perf_counter()
        rows = _shard_rows(predictor, plan, index, config)
        name, tokens = _record_shard(out_dir, manifest, index, rows, writer)
        generated += tokens
        rate = tokens / (time.perf_counter() - shard_started)
        log(f"generation: wrote {name} ({len(rows)} rows, {tokens} tokens, {rate:.0f} tokens/s)")
    seconds = time.perf_counter() - started
    summary = {
        **counts,
        "out_dir": out_dir,
        "checkpoint_step": predictor.step,
        "num_shards": plan.num_shards,
        "shards_done": len(manifest["shards"]),
        "shards_written_now": len(manifest["shards"]) - first,
        "complete": manifest["complete"],
        "generated_tokens": sum(s["generated_tokens"] for s in manifest["shards"]),
        "generated_tokens_now": generated,
        "seconds_now": round(seconds, 3),
        "tokens_per_second": round(generated / seconds, 1) if generated else 0.0,
    }
    if writer:
        shards.write_json(os.path.join(out_dir, shards.SUMMARY), summary)
    return summary


def _plan_counts(plan: planning.Plan, config: GenerationConfig) -> dict[str, Any]:
    """The plan's prompt, row, skipped and padding counts (manifest and summary)."""
    padded, total = planning.padding_counts(plan, config)
    return {
        "prompts": len(plan.prompts),
        "rows": len(plan.prompts) * config.num_samples,
        "skipped_ids": plan.skipped_ids,
        "padded_prompt_tokens": padded,
        "prompt_tokens": total,
        "padding_fraction": round(padded / max(total, 1), 6),
    }


def _start_manifest(out_dir: str, record: dict, fresh: dict) -> dict[str, Any]:
    """The manifest to continue (checked against `record`), written back by process 0."""
    manifest = shards.resume_manifest(out_dir, record, fresh)
    if jax.process_count() > 1:  # also a barrier: every process reads before process 0 writes
        done = np.asarray(multihost_utils.process_allgather(np.int32(len(manifest["shards"]))))
        if len(set(done.tolist())) > 1:
            raise ValueError(
                f"the processes see different numbers of finished shards in {out_dir} "
                f"({done.tolist()}): it must be on a filesystem every process shares"
            )
    if jax.process_index() == 0:
        os.makedirs(out_dir, exist_ok=True)
        shards.write_json(os.path.join(out_dir, shards.MANIFEST), manifest)
    return manifest


def _record_shard(
    out_dir: str, manifest: dict, index: int, rows: list[dict], writer: bool
) -> tuple[str, int]:
    """Adds shard `index` to the manifest (and writes both, shard first, on process 0)."""
    text = shards.shard_text(rows)
    name = shards.shard_name(index, manifest["num_shards"])
    tokens = sum(r["num_tokens"] for r in rows)
    entry = {"file": name, "rows": len(rows), "generated_tokens": tokens}
    manifest["shards"].append({**entry, "sha256": shards.sha256(text)})
    manifest["complete"] = len(manifest["shards"]) == manifest["num_shards"]
    if writer:
        shards.write_text(os.path.join(out_dir, name), text)
        shards.write_json(os.path.join(out_dir, shards.MANIFEST), manifest)
    return name, tokens


def _shard_rows(
    predictor: Predictor, plan: planning.Plan, index: int, config: GenerationConfig
) -> list[dict]:
    """Shard `index`'s output rows, in prompt order then sample order."""
    start = plan.shard(index).start
    shard_rng = jax.random.fold_in(jax.random.PRNGKey(config.seed), index)
    outputs: dict[tuple[int, int], np.ndarray] = {}
    for b, batch in enumerate(planning.shard_batches(plan, index, config)):
        arrays = planning.batch_rows(plan, start, batch, predictor.encoder_decoder)
        tokens = predictor.decode_rows(arrays, jax.random.fold_in(shard_rng, b))
        outputs.update(zip(batch.rows, tokens))
    eos = config.decode.eos_id
    rows = []
    for p in range(len(plan.shard(index))):
        prompt = plan.prompts[start + p]
        for k in range(config.num_samples):
            tokens = outputs[(p, k)]
            ends = np.flatnonzero(tokens == eos)
            rows.append(
                {
                    **prompt,
                    "sample": k,
                    "text": predictor.detokenize(tokens),
                    "num_tokens": int(ends[0]) + 1 if len(ends) else len(tokens),
                    "finished": bool(len(ends)),
                }
            )
    return rows
