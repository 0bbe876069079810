"""Positions and write index of a KV-cached decoder stack, kept in its 'cache' collection."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp


def advance_decode_positions(module: nn.Module, tokens: jax.Array):
    """Decode-mode bookkeeping kept in the 'cache' collection of a decoder stack.

    The init pass (cache not yet created) sees the full target length; it records the key
    positions 0..max_len-1 and a zero write index. Later calls write `tokens.shape[1]`
    positions starting at the index and advance it.

    Returns:
      query positions [1, L], key positions [1, max_len], and the write index.
    """
    initialized = module.has_variable("cache", "cache_index")
    key_positions = module.variable(
        "cache", "key_positions", lambda: jnp.arange(tokens.shape[1], dtype=jnp.int32)
    )
    index = module.variable("cache", "cache_index", lambda: jnp.array(0, jnp.int32))
    cache_index = index.value
    q_pos = cache_index + jnp.arange(tokens.shape[1], dtype=jnp.int32)
    if initialized:
        index.value = cache_index + tokens.shape[1]
    return q_pos[None], key_positions.value[None], cache_index
