"""The decoding KV cache: create it, step the model through it, and keep it sharded by row."""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from t5x_rationale.architectures.axes import constrain
from t5x_rationale.inference.decode_config import StepFn


def new_cache(apply, params, rows: int, length: int):
    """An empty cache of `length` positions (the init pass; XLA drops its unused logits)."""
    _, created = apply({"params": params}, jnp.zeros((rows, length), jnp.int32))
    return constrain_cache(created["cache"])


def step_fn(apply, params) -> StepFn:
    """Feeds one token per row at the cache index; returns next-position logits and cache."""

    def step(cache, tokens):
        logits, mutated = apply({"params": params, "cache": cache}, tokens[:, None])
        return logits[:, -1].astype(jnp.float32), constrain_cache(mutated["cache"])

    return step


def _is_kv(path) -> bool:
    """Whether a cache leaf holds per-row keys or values (the rest is shared by all rows)."""
    name = getattr(path[-1], "key", None)
    return name in ("cached_key", "cached_value")


def map_cache_rows(fn: Callable[[jax.Array, int], jax.Array], cache):
    """Applies fn(leaf, batch_axis) to the per-row cache leaves (keys and values).

    Their layout is [..., batch, kv_heads, length, head_dim] (a leading layer axis when
    layers are scanned); positions and the write index are shared by all rows. An
    encoder-decoder's cross-attention keys/values (the encoded input's) have it too.
    """
    return jax.tree_util.tree_map_with_path(
        lambda path, x: fn(x, x.ndim - 4) if _is_kv(path) else x, cache
    )


def constrain_cache(cache):
    """Keeps cached keys/values sharded like the model's keys/values (rows over the batch axes)."""
    return map_cache_rows(
        lambda x, axis: constrain(x, ("layers",) * axis + ("batch", "kv_heads", "length", "kv")),
        cache,
    )
