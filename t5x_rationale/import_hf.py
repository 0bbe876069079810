"""Import a Hugging Face model directory as a checkpoint of ours.

    python -m t5x_rationale.import_hf --hf_dir DIR --out_dir CKPT [--dtype bfloat16] [--mesh 1x8x1]

Reads `config.json` (Llama, Mistral, Qwen2, T5 v1.1 / Flan-T5 / mT5, original T5) and
`model.safetensors` or a sharded set with its index, and writes into CKPT: `checkpoints/0`
(params only: start runs from it with `--gin.train.init_from='CKPT/checkpoints'`),
`model.gin` (the model config, for `--gin_file`), a copy of the HF `config.json`, and
`tokenizer/` (the HF tokenizer files: `--gin.train.vocabulary_path='CKPT/tokenizer'`).
Each param is read straight into its sharding on the mesh, a device's slice at a time.
CKPT is written beside itself and renamed when complete: a failed import leaves nothing.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import time

import jax

from t5x_rationale.architectures import build_model, dummy_batch
from t5x_rationale.interop.checkpoint_files import gin_model_file, save_params
from t5x_rationale.interop.hf_config import read_hf_config
from t5x_rationale.interop.importer import import_params
from t5x_rationale.interop.safetensors_io import SafetensorsCheckpoint
from t5x_rationale.interop.tokenizer_files import copy_tokenizer_files, tokenizer_files
from t5x_rationale.runtime.host_memory import reexec_with_one_malloc_arena
from t5x_rationale.runtime.partitioning import MeshConfig, Partitioner, create_mesh
from t5x_rationale.runtime.run_files import write_text_atomic
from t5x_rationale.runtime.trainer import abstract_params


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--hf_dir", required=True, help="a Hugging Face model directory")
    p.add_argument("--out_dir", required=True, help="where the checkpoint goes (must not exist)")
    p.add_argument("--dtype", default="float32", help="param dtype: float32 or bfloat16")
    p.add_argument("--mesh", default="1x-1x1", help="DATAxFSDPxTENSOR, -1 fills the devices")
    return p.parse_args(argv)


def import_hf(
    hf_dir: str,
    out_dir: str,
    *,
    dtype: str = "float32",
    mesh: str = "1x-1x1",
    timings: dict | None = None,
):
    """Writes the checkpoint of `hf_dir` to `out_dir`; returns (config, params).

    `timings`, if given, receives the seconds spent reading the params into place
    ("read_s") and writing the checkpoint ("save_s").
    """
    timings = {} if timings is None else timings
    start = time.perf_counter()
    if os.path.exists(out_dir):
        raise FileExistsError(f"--out_dir {out_dir} exists; choose a new directory")
    config = read_hf_config(hf_dir, param_dtype=dtype)
    checkpoint = SafetensorsCheckpoint.open(hf_dir)
    partitioner = Partitioner(create_mesh(MeshConfig.parse(mesh)))
    enc_dec = config.architecture == "encoder_decoder"
    example = dummy_batch(config, 1, target_length=8, input_length=8 if enc_dec else 0)
    targets = abstract_params(build_model(config), partitioner, example)
    params = jax.block_until_ready(import_params(checkpoint, config, targets))
    timings["read_s"] = time.perf_counter() - start
    partial = f"{out_dir.rstrip('/')}.importing"
    shutil.rmtree(partial, ignore_errors=True)
    os.makedirs(partial)
    try:
        save_params(os.path.join(partial, "checkpoints"), params)
        write_text_atomic(os.path.join(partial, "model.gin"), gin_model_file(config, hf_dir))
        shutil.copy(os.path.join(hf_dir, "config.json"), os.path.join(partial, "hf_config.json"))
        _copy_tokenizer(hf_dir, os.path.join(partial, "tokenizer"))
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    os.replace(partial, out_dir)
    timings["save_s"] = time.perf_counter() - start - timings["read_s"]
    return config, params


def _copy_tokenizer(hf_dir: str, target: str) -> None:
    """The tokenizer files (and generation_config.json, for its special ids) of `hf_dir`, so
    that CKPT/tokenizer serves as `vocabulary_path` and `export` writes them back."""
    if not tokenizer_files(hf_dir):
        return
    copy_tokenizer_files(hf_dir, target, require_tokenizer=False)
    generation = os.path.join(hf_dir, "generation_config.json")
    if os.path.isfile(generation):
        shutil.copy(generation, target)


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.getLogger("absl").setLevel(logging.ERROR)  # orbax's notices of a normal run
    start, timings = time.time(), {}
    try:
        config, _ = import_hf(
            args.hf_dir, args.out_dir, dtype=args.dtype, mesh=args.mesh, timings=timings
        )
    except (ValueError, FileNotFoundError, FileExistsError) as e:
        print(f"import_hf: error: {e}", file=sys.stderr)
        return 2
    print(
        f"import_hf: {args.hf_dir} -> {args.out_dir} ({type(config).__name__}, "
        f"{config.emb_dim} wide, {time.time() - start:.1f} s: {timings['read_s']:.1f} s "
        f"reading the params into place, {timings['save_s']:.1f} s writing the checkpoint)"
    )
    return 0


if __name__ == "__main__":
    reexec_with_one_malloc_arena()  # the checkpoint write's buffers in one arena
    sys.exit(main())
