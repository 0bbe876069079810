"""Files a run directory carries besides checkpoints, written whole or not at all."""

from __future__ import annotations

import os

import jax


def write_text_atomic(path: str, text: str) -> None:
    """Writes `text` to `path` via a temporary file and a rename (no half-written files)."""
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def write_run_info(run_dir: str, *, config_gin: str, model_info: str) -> None:
    """Creates `run_dir` and writes `config.gin` and `model-info.txt` (process 0 only)."""
    if jax.process_index() != 0:
        return
    os.makedirs(run_dir, exist_ok=True)
    write_text_atomic(os.path.join(run_dir, "config.gin"), config_gin)
    write_text_atomic(os.path.join(run_dir, "model-info.txt"), model_info)


def model_info(trainer, example_batch: dict, model_config) -> str:
    """`model-info.txt`: the config, then every param with shape, logical axes and sharding."""
    abstract, specs, shardings, notes = trainer.layout(example_batch)
    table = trainer.partitioner.describe(abstract.params, shardings.params, specs.params)
    lines = [f"model: {model_config}", f"mesh: {dict(trainer.partitioner.mesh.shape)}", "", table]
    if notes:
        lines += ["", "replicated because the mesh axes do not divide the dimension:", *notes]
    return "\n".join(lines) + "\n"
