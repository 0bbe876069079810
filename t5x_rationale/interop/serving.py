"""Greedy decoding from a `--format jax_export` directory with jax and numpy alone: no model
code (no `architectures`, no flax) is imported. The layout is described in
`interop.jax_export`; the loop is `inference.token_loop`'s greedy path, so the tokens equal
`inference.decoding.decode`'s for the same prompts padded to the same width.

    model = ServingModel.load(directory)
    tokens, lengths = model.generate(prompts)  # prompts [B, <= max_input_length], 0-padded

Decoder-only prompts are right-padded; the rows share one cache index, so the shortest
prompt minus its last token is prefilled and the loop then feeds each row its next prompt
token until its prompt ends (as `decode` does). Encoder-decoder inputs are encoded once and
the decoder starts from `decoder_start_token_id`.

Compatibility is `jax.export`'s: a directory loads with the jax that wrote it (the manifest's
`jax_version`) or a newer one inside its backward-compatibility window (about six months);
past that, export again from the checkpoint.
"""

from __future__ import annotations

import functools
import json
import os
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import export

from t5x_rationale.interop.safetensors_io import SafetensorsCheckpoint

MANIFEST = "manifest.json"
FORMAT = "t5x_rationale.jax_export"


class ServingModel:
    """The exported functions, their params on the default device, and the manifest."""

    def __init__(self, manifest: dict, functions: dict[str, export.Exported], params: list):
        self.manifest = manifest
        self.functions = functions
        self.params = params
        self.enc_dec = manifest["architecture"] == "encoder_decoder"
        self._call = {name: jax.jit(fn.call) for name, fn in functions.items()}
        self._loop = jax.jit(
            functools.partial(_greedy_loop, functions["step"].call),
            static_argnames=("start", "limit"),
        )

    @classmethod
    def load(cls, directory: str) -> ServingModel:
        """Reads the manifest, deserializes every function and reads the params.

        Raises:
          FileNotFoundError: naming the first missing file. ValueError: not this format.
        """
        manifest = _read_manifest(directory)
        files = [f["file"] for f in manifest["functions"].values()] + [manifest["params_file"]]
        for file in files:
            if not os.path.isfile(os.path.join(directory, file)):
                raise FileNotFoundError(
                    f"{directory}: {file} is missing (the manifest names it; re-export with "
                    "`python -m t5x_rationale.export --format jax_export`)"
                )
        functions = {}
        for name, entry in manifest["functions"].items():
            with open(os.path.join(directory, entry["file"]), "rb") as f:
                functions[name] = export.deserialize(bytearray(f.read()))
        weights = SafetensorsCheckpoint.open(os.path.join(directory, manifest["params_file"]))
        params = [jnp.asarray(weights.read(spec["name"])) for spec in manifest["params"]]
        return cls(manifest, functions, params)

    @property
    def special_ids(self) -> dict[str, int]:
        return self.manifest.get("special_ids", {})

    def encode(self, inputs) -> jax.Array:
        """Encoder output [B, S, D] of 0-padded inputs [B, S] (encoder-decoder only)."""
        return self._call["encode"](self.params, self._pad(inputs))

    def prefill(self, prompt) -> tuple[jax.Array, list]:
        """(float32 logits [B, p, V], cache) of prompts [B, p] fed from an empty cache."""
        prompt = np.asarray(prompt, np.int32)
        cache = self._call["init_cache"](self.params, self._pad(prompt))
        return self._call["prefill"](self.params, cache, prompt)

    def init_cache(self, inputs) -> list:
        """An empty cache for 0-padded prompts or inputs [B, <= max_input_length]."""
        return self._call["init_cache"](self.params, self._pad(inputs))

    def step(self, cache, token, *context) -> tuple[jax.Array, list]:
        """(float32 next-token logits [B, V], cache) after feeding token [B] at the cache
        position; encoder-decoder context: (encoder output, 0-padded inputs)."""
        return self._call["step"](self.params, cache, jnp.asarray(token, jnp.int32), *context)

    def generate(
        self, prompts, *, eos_id: int | None = None, lengths=None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Greedy continuations of 0-padded prompts [B, W] (W <= max_input_length).

        `lengths` [B]: a decoder's prompt lengths (by default a prompt ends at its last
        non-zero token, which is wrong where id 0 is a text token that ends it).

        Returns:
          tokens [B, max_decode_length] int32 (zeros after EOS, EOS kept) and lengths [B].
        """
        eos_id = self.special_ids.get("eos_token_id", 1) if eos_id is None else eos_id
        prompt = self._pad(prompts)
        cache = self._call["init_cache"](self.params, prompt)
        limit = self.manifest["max_decode_length"]
        if self.enc_dec:
            context = (self.encode(prompt), prompt)
            start_id = self.special_ids.get("decoder_start_token_id", 0)
            fed = np.full((prompt.shape[0], 1), start_id, np.int32)
            return self._run(cache, fed, 0, limit, eos_id, context, lengths=np.ones_like(fed[:, 0]))
        lengths = (
            _prompt_lengths(prompt) if lengths is None else _checked(lengths, np.asarray(prompts))
        )
        start = int(lengths.min()) - 1
        if start > 0:
            _, cache = self._call["prefill"](self.params, cache, prompt[:, :start])
        return self._run(cache, prompt, start, limit, eos_id, (), lengths=lengths)

    def _run(self, cache, prompt, start, limit, eos_id, context, *, lengths):
        out = self._loop(
            self.params, cache, context, prompt, lengths, eos_id, start=start, limit=limit
        )
        return np.asarray(out.tokens), np.asarray(out.lengths)

    def _pad(self, tokens) -> np.ndarray:
        """Right-pads [B, W] token ids with 0 to the exported input width."""
        tokens = np.asarray(tokens, np.int32)
        width = self.manifest["max_input_length"]
        if tokens.ndim != 2 or tokens.shape[1] > width:
            raise ValueError(f"expected prompts [batch, <= {width}], got shape {tokens.shape}")
        return np.pad(tokens, ((0, 0), (0, width - tokens.shape[1])))


def _read_manifest(directory: str) -> dict:
    path = os.path.join(directory, MANIFEST)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{directory}: {MANIFEST} is missing (not a jax_export directory)")
    with open(path, encoding="utf-8") as f:
        manifest = json.load(f)
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{path}: format {manifest.get('format')!r} is not {FORMAT!r}")
    return manifest


def _checked(lengths, prompt: np.ndarray) -> np.ndarray:
    lengths = np.asarray(lengths, np.int32)
    if (
        lengths.shape != prompt.shape[:1]
        or not ((lengths >= 1) & (lengths <= prompt.shape[1])).all()
    ):
        raise ValueError(
            f"lengths must be [{prompt.shape[0]}] in [1, {prompt.shape[1]}]: {lengths}"
        )
    return lengths


def _prompt_lengths(prompt: np.ndarray) -> np.ndarray:
    """Each right-padded prompt's length (last non-pad position + 1), at least 1."""
    positions = np.arange(1, prompt.shape[1] + 1, dtype=np.int32)
    return np.maximum(np.max(np.where(prompt != 0, positions, 0), axis=1), 1).astype(np.int32)


class _State(NamedTuple):
    pos: jax.Array
    last: jax.Array
    cache: Any
    tokens: jax.Array
    lengths: jax.Array
    done: jax.Array


def _greedy_loop(step, params, cache, context, prompt, lengths_in, eos_id, *, start, limit):
    """`token_loop`'s greedy path over the exported step: one position per iteration."""
    rows, width = prompt.shape
    columns = jnp.arange(limit, dtype=jnp.int32)

    def body(s: _State) -> _State:
        column = jnp.minimum(s.pos, width - 1)
        prompt_token = jax.lax.dynamic_index_in_dim(prompt, column, axis=1, keepdims=False)
        fed = jnp.where(s.pos < lengths_in, prompt_token, s.last)
        logits, cache = step(params, s.cache, fed, *context)
        generated = s.pos + 1 - lengths_in  # output column of the token predicted now
        active = (generated >= 0) & ~s.done
        best = jnp.argmax(jax.nn.log_softmax(logits, axis=-1), axis=-1)
        token = jnp.where(active, best, 0).astype(jnp.int32)
        write = active[:, None] & (columns[None] == generated[:, None])
        return _State(
            pos=s.pos + 1,
            last=token,
            cache=cache,
            tokens=jnp.where(write, token[:, None], s.tokens),
            lengths=jnp.where(active, generated + 1, s.lengths),
            done=s.done | (active & ((token == eos_id) | (generated >= limit - 1))),
        )

    init = _State(
        pos=jnp.asarray(start, jnp.int32),
        last=jnp.zeros((rows,), jnp.int32),
        cache=cache,
        tokens=jnp.zeros((rows, limit), jnp.int32),
        lengths=jnp.zeros((rows,), jnp.int32),
        done=jnp.zeros((rows,), bool),
    )
    end = width + limit - 1
    final = jax.lax.while_loop(lambda s: (s.pos < end) & ~jnp.all(s.done), body, init)
    return final
