"""A random Llama-architecture Hugging Face checkpoint, written tensor by tensor.

For measuring the import (`bench_import`): `config.json` (model_type llama, untied, GQA) and
the weights as N safetensors shards plus `model.safetensors.index.json`, as `transformers`
names and orders them. Each shard's header is laid out by `safetensors_format.file_chunks`
(from the shapes alone), then its tensors are generated and written one at a time, so writing
a 6 GB checkpoint holds one tensor in memory, never a shard or the model. Tensor k of the
model depends only on (seed, k): `generated_tensor` gives it back for checks.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os

import numpy as np

from t5x_rationale.interop.safetensors_format import DTYPES, file_chunks
from t5x_rationale.interop.safetensors_io import INDEX_FILE

SCALE = 0.02  # the init scale of Llama checkpoints: values of the size real weights have


@dataclasses.dataclass(frozen=True)
class DecoderShape:
    """The sizes of a Llama-style decoder (untied embeddings, grouped-query attention)."""

    hidden: int = 2048
    layers: int = 22
    intermediate: int = 8192
    heads: int = 16
    kv_heads: int = 4
    vocab: int = 32000

    def hf_config(self, dtype: str) -> dict:
        """The `config.json` of this shape (the fields `interop.hf_config` reads)."""
        return {
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "vocab_size": self.vocab,
            "hidden_size": self.hidden,
            "intermediate_size": self.intermediate,
            "num_hidden_layers": self.layers,
            "num_attention_heads": self.heads,
            "num_key_value_heads": self.kv_heads,
            "head_dim": self.hidden // self.heads,
            "hidden_act": "silu",
            "rms_norm_eps": 1e-5,
            "rope_theta": 10000.0,
            "tie_word_embeddings": False,
            "torch_dtype": dtype,
        }

    def tensors(self) -> list[tuple[str, tuple[int, ...]]]:
        """(HF name, shape) of every tensor, in the order of the model's state dict."""
        d, f, head_dim = self.hidden, self.intermediate, self.hidden // self.heads
        kv = self.kv_heads * head_dim
        out = [("model.embed_tokens.weight", (self.vocab, d))]
        for i in range(self.layers):
            p = f"model.layers.{i}"
            out += [
                (f"{p}.self_attn.q_proj.weight", (d, d)),
                (f"{p}.self_attn.k_proj.weight", (kv, d)),
                (f"{p}.self_attn.v_proj.weight", (kv, d)),
                (f"{p}.self_attn.o_proj.weight", (d, d)),
                (f"{p}.mlp.gate_proj.weight", (f, d)),
                (f"{p}.mlp.up_proj.weight", (f, d)),
                (f"{p}.mlp.down_proj.weight", (d, f)),
                (f"{p}.input_layernorm.weight", (d,)),
                (f"{p}.post_attention_layernorm.weight", (d,)),
            ]
        return out + [("model.norm.weight", (d,)), ("lm_head.weight", (self.vocab, d))]

    def num_params(self) -> int:
        return sum(math.prod(shape) for _, shape in self.tensors())


def generated_tensor(shape: DecoderShape, name: str, *, dtype: str, seed: int) -> np.ndarray:
    """The tensor `name` of the checkpoint `write_checkpoint(shape, dtype=dtype, seed=seed)`."""
    names = [n for n, _ in shape.tensors()]
    k = names.index(name)
    dims = shape.tensors()[k][1]
    if name.endswith("norm.weight"):  # RMSNorm scales sit near one
        values = 1.0 + SCALE * np.random.default_rng([seed, k]).standard_normal(dims, np.float32)
    else:
        values = SCALE * np.random.default_rng([seed, k]).standard_normal(dims, np.float32)
    return values.astype(_np_dtype(dtype))


def _np_dtype(dtype: str) -> np.dtype:
    by_name = {"float32": "F32", "bfloat16": "BF16", "float16": "F16"}
    if dtype not in by_name:
        raise ValueError(f"dtype {dtype!r} is not one of {sorted(by_name)}")
    return DTYPES[by_name[dtype]]


def plan_shards(sizes: list[tuple[str, int]], shards: int) -> list[list[str]]:
    """Names in order, cut into `shards` runs of about equal bytes (none empty)."""
    if not 1 <= shards <= len(sizes):
        raise ValueError(f"{shards} shards for {len(sizes)} tensors")
    total = sum(n for _, n in sizes)
    plan: list[list[str]] = [[]]
    done = 0
    for i, (name, nbytes) in enumerate(sizes):
        left = len(sizes) - i  # tensors still to place, this one included
        must_cut = shards - len(plan) >= left  # one tensor per remaining shard
        cut = done + nbytes / 2 > total * len(plan) / shards
        if plan[-1] and len(plan) < shards and (cut or must_cut):
            plan.append([])
        plan[-1].append(name)
        done += nbytes
    return plan


def write_checkpoint(
    directory: str, shape: DecoderShape, *, shards: int = 4, dtype: str = "float32", seed: int = 0
) -> dict:
    """Writes `config.json`, the shards and the index into `directory` (created).

    Returns:
      {"params", "bytes" (the weight files on disk), "largest_tensor", "largest_tensor_bytes",
       "shards"}.
    """
    os.makedirs(directory, exist_ok=True)
    np_dtype = _np_dtype(dtype)
    shapes = dict(shape.tensors())
    sizes = [(n, math.prod(s) * np_dtype.itemsize) for n, s in shape.tensors()]
    plan = plan_shards(sizes, shards)
    files = [f"model-{k:05d}-of-{len(plan):05d}.safetensors" for k in range(1, len(plan) + 1)]
    disk = 0
    for file, names in zip(files, plan):
        path = os.path.join(directory, file)
        disk += _write_shard(path, names, shapes, shape, dtype=dtype, seed=seed)
    weight_map = {name: file for file, names in zip(files, plan) for name in names}
    index = {"metadata": {"total_size": sum(n for _, n in sizes)}, "weight_map": weight_map}
    with open(os.path.join(directory, INDEX_FILE), "w") as f:
        json.dump(index, f, indent=2, sort_keys=True)
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(shape.hf_config(dtype), f, indent=2)
    largest, largest_bytes = max(sizes, key=lambda item: item[1])
    return {
        "params": shape.num_params(),
        "bytes": disk,
        "largest_tensor": largest,
        "largest_tensor_bytes": largest_bytes,
        "shards": len(plan),
    }


def _write_shard(path: str, names, shapes, shape: DecoderShape, *, dtype: str, seed: int) -> int:
    """One shard: the header from zero-stride placeholders, then each tensor as generated."""
    np_dtype = _np_dtype(dtype)
    placeholders = {n: np.broadcast_to(np.zeros((), np_dtype), shapes[n]) for n in names}
    header = next(file_chunks(placeholders, {"format": "pt"}))
    # file_chunks lays tensors out by dtype rank, then name: one dtype here, so by name.
    with open(path, "wb") as f:
        f.write(header)
        for name in sorted(names):
            tensor = generated_tensor(shape, name, dtype=dtype, seed=seed)
            f.write(memoryview(tensor.reshape(-1).view(np.uint8)))
    return os.path.getsize(path)
