"""A Quiet-STaR model's additions as `quiet_star.safetensors`, beside its base LM's export.

The base LM exports as any decoder (its tensors are the plain LM's); this file holds the rest,
in the layout `nn.Linear` users expect (weights `[out, in]`, applied as `x @ W.T + b`):

    start_thought             [d]      the start-of-thought embedding, as fed to the model
    end_thought               [d]      the end-of-thought embedding
    mixing_head.0.weight      [d, 2d]  input concat(h_base, h_thought): final-norm outputs
    mixing_head.0.bias        [d]      ReLU after
    mixing_head.1.weight      [d, d]
    mixing_head.1.bias        [d]      ReLU after
    mixing_head.2.weight      [1, d]   no bias; w = this output (sigmoid(w) if `mixing_sigmoid`)

The mixed hidden state is `(1 - w) h_base + w h_thought`, then the LM head. The thought
embeddings are the effective values (we store them divided by `thought_scale`); they are the
rows the Quiet-STaR paper appends to the embedding table for its two added tokens. The file's
metadata records `thought_token_ids`, `thought_init_ids`, `thought_scale` and
`mixing_sigmoid` (JSON values).
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import numpy as np

from t5x_rationale.interop.safetensors_format import file_chunks
from t5x_rationale.interop.safetensors_io import write_file_aside

QUIET_STAR_FILE = "quiet_star.safetensors"
_LAYERS = ("hidden_0", "hidden_1", "out")


def quiet_star_tensors(config, params: Any) -> dict[str, np.ndarray]:
    """The file's tensors from a Quiet-STaR model's params (gathered to the host)."""
    host = jax.device_get({k: params[k] for k in ("start_thought", "end_thought", "mixing_head")})
    scale = np.float32(config.thought_scale)
    tensors = {
        name: (np.asarray(host[name], np.float32) * scale).astype(np.asarray(host[name]).dtype)
        for name in ("start_thought", "end_thought")
    }
    head = host["mixing_head"]
    for i, layer in enumerate(_LAYERS):
        tensors[f"mixing_head.{i}.weight"] = np.ascontiguousarray(
            np.asarray(head[f"{layer}_kernel"]).T
        )
        if f"{layer}_bias" in head:
            tensors[f"mixing_head.{i}.bias"] = np.asarray(head[f"{layer}_bias"])
    return tensors


def quiet_star_metadata(config) -> dict[str, str]:
    return {
        "format": "pt",
        "thought_token_ids": json.dumps(list(config.thought_token_ids)),
        "thought_init_ids": json.dumps(list(config.thought_init_ids)),
        "thought_scale": json.dumps(config.thought_scale),
        "mixing_sigmoid": json.dumps(config.mixing_sigmoid),
    }


def write_quiet_star_file(directory: str, config, params: Any) -> str:
    """Writes `directory/quiet_star.safetensors` (aside, then renamed); returns its path."""
    path = os.path.join(directory, QUIET_STAR_FILE)
    tensors = quiet_star_tensors(config, params)
    write_file_aside(path, file_chunks(tensors, quiet_star_metadata(config)))
    return path
