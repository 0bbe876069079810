"""Serving export: a checkpoint as `jax.export`-serialized StableHLO functions plus its params,
which `interop.serving` runs (greedy decoding) with jax and numpy alone, without the model code.

What `out_dir` holds (the layout `serving` reads):

- `manifest.json`: architecture, vocabulary size, special ids, the fixed lengths, the
  platforms lowered for, the params' and the KV cache's arrays in argument order (name,
  shape with "b" for the batch axis, dtype) and each function's file and signature.
- `model.safetensors`: the params, named by their tree path (`decoder/layers_0/mlp/wi/kernel`).
- one `<function>.jax_exported` per function (`Exported.serialize()` bytes). Params are
  arguments, never baked-in constants, so these files stay small. The batch axis is symbolic
  (`b`); every other length is fixed at export and recorded in the manifest.

Functions; `params` and `cache` are flat lists in the manifest's order, and the decode
position lives in the cache (its `cache_index` arrays), as in `decoding.decode`:

- decoder: `init_cache(params, prompt[b, P]) -> cache` (an empty cache of P + T positions),
  `prefill(params, cache, tokens[b, p]) -> (logits[b, p, V], cache)` for any 1 <= p <= P,
  `step(params, cache, token[b]) -> (logits[b, V], cache)`.
- encoder-decoder: `encode(params, inputs[b, S]) -> encoded[b, S, D]`,
  `init_cache(params, inputs[b, S]) -> cache` (T positions, and the cross-attention keys
  and values of `inputs`, projected once),
  `step(params, cache, token[b], encoded, inputs) -> (logits[b, V], cache)` (the step reads
  `inputs` for its padding mask; `encoded` stays in the signature but the cache has it).

Logits are float32. P (or S) is `max_input_length`, T `max_decode_length`. A Quiet-STaR
model exports as a decoder that decodes without thinking, as `decode` runs it.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import export

from t5x_rationale.architectures import build_model, dummy_batch
from t5x_rationale.interop.safetensors_io import SINGLE_FILE, write_safetensors
from t5x_rationale.runtime.checkpoints import restore_params
from t5x_rationale.runtime.partitioning import MeshConfig, Partitioner, create_mesh
from t5x_rationale.runtime.trainer import abstract_params

FORMAT = "t5x_rationale.jax_export"
VERSION = 1
MANIFEST = "manifest.json"
SUFFIX = ".jax_exported"
PLATFORMS = ("cpu", "cuda")
BATCH = "b"  # the symbolic batch axis, as the manifest writes it


def export_jax(
    checkpoint: str,
    config,
    out_dir: str,
    *,
    max_input_length: int,
    max_decode_length: int,
    special_ids: dict[str, int],
    platforms: tuple[str, ...] = PLATFORMS,
) -> dict:
    """Writes `checkpoint`'s params of model `config` and its exported functions to `out_dir`
    (written beside itself and renamed when complete). Returns the manifest."""
    if os.path.exists(out_dir):
        raise FileExistsError(f"--out_dir {out_dir} exists; choose a new directory")
    if getattr(config, "architecture", None) not in ("decoder", "encoder_decoder", "quiet_star"):
        raise ValueError(
            f"jax_export takes a decoder, encoder-decoder or Quiet-STaR config, not {config!r}"
        )
    if min(max_input_length, max_decode_length) < 1:
        raise ValueError(
            f"max_input_length ({max_input_length}) and max_decode_length "
            f"({max_decode_length}) must be positive"
        )
    params = _restore(checkpoint, config)
    manifest, blobs = export_functions(
        config,
        params,
        max_input_length=max_input_length,
        max_decode_length=max_decode_length,
        platforms=tuple(platforms),
    )
    manifest["special_ids"] = dict(special_ids)
    partial = f"{out_dir.rstrip('/')}.exporting"
    shutil.rmtree(partial, ignore_errors=True)
    try:
        write_safetensors(partial, named_params(params), metadata={"format": FORMAT})
        for file, blob in blobs.items():
            with open(os.path.join(partial, file), "wb") as f:
                f.write(blob)
        with open(os.path.join(partial, MANIFEST), "w", encoding="utf-8") as f:
            json.dump(manifest, f, indent=2)
            f.write("\n")
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    os.replace(partial, out_dir)
    return manifest


def _restore(checkpoint: str, config) -> Any:
    """The checkpoint's params as host NumPy arrays (gathered if the mesh sharded them)."""
    enc_dec = config.architecture == "encoder_decoder"
    example = dummy_batch(config, 1, target_length=8, input_length=8 if enc_dec else 0)
    partitioner = Partitioner(create_mesh(MeshConfig.parse("1x-1x1")))
    params, _ = restore_params(
        checkpoint, abstract_params(build_model(config), partitioner, example)
    )
    return jax.tree.map(lambda x: np.asarray(jax.device_get(x)), nn.unbox(params))


def _path_name(path) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)


def named_params(params) -> dict[str, np.ndarray]:
    """name -> array in the tree's flattening order (the exported functions' argument order)."""
    return {
        _path_name(p): np.asarray(x) for p, x in jax.tree_util.tree_flatten_with_path(params)[0]
    }


def _spec(name: str, x, batch_axis=None) -> dict:
    shape = [BATCH if axis == batch_axis else int(n) for axis, n in enumerate(x.shape)]
    return {"name": name, "shape": shape, "dtype": np.dtype(x.dtype).name}


def _symbolic(x, batch, batch_axis=None) -> jax.ShapeDtypeStruct:
    shape = tuple(batch if axis == batch_axis else n for axis, n in enumerate(x.shape))
    return jax.ShapeDtypeStruct(shape, x.dtype)


def _cache_batch_axis(path, x):
    """Keys and values are [..., batch, kv_heads, length, head_dim]; the rest is shared."""
    return x.ndim - 4 if getattr(path[-1], "key", None) in ("cached_key", "cached_value") else None


class _Functions:
    """The model's serving functions over flat lists of params and cache arrays."""

    def __init__(self, config, params, input_length: int, decode_length: int):
        self.model = build_model(config)
        self.enc_dec = config.architecture == "encoder_decoder"
        self.cache_length = decode_length if self.enc_dec else input_length + decode_length
        self.param_tree = jax.tree.structure(params)
        self.param_leaves = jax.tree.leaves(params)
        inputs = jax.ShapeDtypeStruct((2, input_length), jnp.int32)
        self.encoded = None
        if self.enc_dec:
            self.encoded = jax.eval_shape(self.encode, self.param_leaves, inputs)
        cache = jax.eval_shape(self._empty_cache, self.param_leaves, inputs)
        self.cache_tree = jax.tree.structure(cache)
        self.cache_paths = jax.tree_util.tree_flatten_with_path(cache)[0]

    def _variables(self, flat_params, cache=None) -> dict:
        variables = {"params": jax.tree.unflatten(self.param_tree, flat_params)}
        if cache is not None:
            variables["cache"] = jax.tree.unflatten(self.cache_tree, cache)
        return variables

    def _decode(self, variables, tokens, encoded=None, inputs=None):
        """(float32 logits, new cache tree) of one cached decoder call."""
        if self.enc_dec:
            logits, mutated = self.model.apply(
                variables, encoded, inputs, tokens, decode=True, mutable=["cache"], method="decode"
            )
        else:
            logits, mutated = self.model.apply(variables, tokens, decode=True, mutable=["cache"])
        return logits.astype(jnp.float32), mutated["cache"]

    def _empty_cache(self, flat_params, inputs):
        """The init pass: its token length sets the cache length (XLA drops its logits). An
        encoder-decoder's cache also holds the cross-attention keys/values of `inputs`."""
        rows = inputs.shape[0]
        encoded = self.encode(flat_params, inputs) if self.enc_dec else None
        zeros = jnp.zeros((rows, self.cache_length), jnp.int32)
        return self._decode(self._variables(flat_params), zeros, encoded, inputs)[1]

    def init_cache(self, flat_params, inputs):
        return jax.tree.leaves(self._empty_cache(flat_params, inputs))

    def encode(self, flat_params, inputs):
        return self.model.apply(self._variables(flat_params), inputs, method="encode")

    def prefill(self, flat_params, cache, tokens):
        logits, cache = self._decode(self._variables(flat_params, cache), tokens)
        return logits, jax.tree.leaves(cache)

    def step(self, flat_params, cache, token, *context):
        variables = self._variables(flat_params, cache)
        logits, cache = self._decode(variables, token[:, None], *context)
        return logits[:, -1], jax.tree.leaves(cache)


SIGNATURES = {
    "encode": "(params, inputs[b, S]) -> encoded[b, S, D]",
    "init_cache": "(params, inputs[b, S or P]) -> cache",
    "prefill": "(params, cache, tokens[b, p]) -> (logits[b, p, V], cache), 1 <= p <= P",
    "step": "(params, cache, token[b]) -> (logits[b, V], cache)",
    "step_encoder_decoder": (
        "(params, cache, token[b], encoded[b, S, D], inputs[b, S]) -> (logits[b, V], cache)"
    ),
}


def _calls(fns: _Functions, input_length: int) -> dict[str, tuple[Callable, tuple]]:
    """Each function with its argument specs (batch symbolic)."""
    (b,) = export.symbolic_shape(BATCH)
    params = [jax.ShapeDtypeStruct(x.shape, x.dtype) for x in fns.param_leaves]

    def cache(batch):
        return [_symbolic(x, batch, _cache_batch_axis(p, x)) for p, x in fns.cache_paths]

    inputs = jax.ShapeDtypeStruct((b, input_length), jnp.int32)
    token = jax.ShapeDtypeStruct((b,), jnp.int32)
    calls = {"init_cache": (fns.init_cache, (params, inputs))}
    if fns.enc_dec:
        encoded = _symbolic(fns.encoded, b, 0)
        calls["encode"] = (fns.encode, (params, inputs))
        calls["step"] = (fns.step, (params, cache(b), token, encoded, inputs))
    else:  # the prefill length is a second symbol, in a scope of its own
        bp, p = export.symbolic_shape(f"{BATCH}, p", constraints=(f"p <= {input_length}",))
        tokens = jax.ShapeDtypeStruct((bp, p), jnp.int32)
        calls["prefill"] = (fns.prefill, (params, cache(bp), tokens))
        calls["step"] = (fns.step, (params, cache(b), token))
    return calls


def export_functions(
    config, params, *, max_input_length: int, max_decode_length: int, platforms: tuple[str, ...]
) -> tuple[dict, dict[str, bytearray]]:
    """(manifest without special ids, file name -> serialized `Exported`) for `params`."""
    fns = _Functions(config, params, max_input_length, max_decode_length)
    blobs, functions = {}, {}
    for name, (fn, args) in _calls(fns, max_input_length).items():
        exported = export.export(jax.jit(fn), platforms=platforms)(*args)
        blobs[name + SUFFIX] = exported.serialize()
        key = f"{name}_encoder_decoder" if fns.enc_dec and name == "step" else name
        functions[name] = {"file": name + SUFFIX, "signature": SIGNATURES[key]}
    cache = [_spec(_path_name(p), x, _cache_batch_axis(p, x)) for p, x in fns.cache_paths]
    return {
        "format": FORMAT,
        "version": VERSION,
        "jax_version": jax.__version__,
        "architecture": "encoder_decoder" if fns.enc_dec else "decoder",
        "vocab_size": int(config.vocab_size),
        "max_input_length": max_input_length,
        "max_decode_length": max_decode_length,
        "cache_length": fns.cache_length,
        "platforms": list(platforms),
        "params_file": SINGLE_FILE,
        "params": [_spec(name, x) for name, x in named_params(params).items()],
        "cache": cache,
        "functions": functions,
    }, blobs
