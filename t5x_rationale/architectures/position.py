"""Position information: rotary embeddings (Llama) and T5 relative position buckets."""

from __future__ import annotations

import math
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp


def rope_inv_freq(head_dim: int, theta: float, scaling: Optional[tuple] = None) -> jax.Array:
    """The [head_dim / 2] inverse frequencies `theta ** (-2i / head_dim)`, float32.

    `scaling` ("llama3", s, lo, hi, N) is Llama 3's scaling: a frequency whose wavelength
    `w = 2 pi / f` is below N / hi is kept, one above N / lo is divided by s, and one in
    between is blended, `(1 - t) f / s + t f` with `t = (N / w - lo) / (hi - lo)`.
    """
    half = head_dim // 2
    inv_freq = theta ** (-jnp.arange(half, dtype=jnp.float32) / half)
    if scaling is None:
        return inv_freq
    if scaling[0] != "llama3":
        raise ValueError(f"unknown rope scaling {scaling!r}")
    factor, low, high, original = scaling[1:]
    wavelength = 2 * math.pi / inv_freq
    blend = (original / wavelength - low) / (high - low)
    blended = (1 - blend) * inv_freq / factor + blend * inv_freq
    scaled = jnp.where(wavelength > original / low, inv_freq / factor, blended)
    return jnp.where(wavelength < original / high, inv_freq, scaled)


def apply_rope(
    x: jax.Array, positions: jax.Array, theta: float = 10000.0, scaling: Optional[tuple] = None
) -> jax.Array:
    """Rotary position embedding, rotate-half convention (the Hugging Face Llama layout).

    Args:
      x: [batch, length, heads, head_dim].
      positions: [batch, length] integer positions.
      theta: RoPE base.
      scaling: frequency scaling (`DecoderConfig.rope_scaling`), or None.
    """
    half = x.shape[-1] // 2
    freqs = rope_inv_freq(x.shape[-1], theta, scaling)
    angles = positions.astype(jnp.float32)[..., None] * freqs  # [b, l, half]
    sin = jnp.sin(angles)[:, :, None, :]
    cos = jnp.cos(angles)[:, :, None, :]
    x32 = x.astype(jnp.float32)
    x1, x2 = x32[..., :half], x32[..., half:]
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x.dtype)


def relative_position_bucket(
    relative_position: jax.Array, *, bidirectional: bool, num_buckets: int, max_distance: int
) -> jax.Array:
    """T5 bucketing of (key - query) distances: exact for small, log-spaced for large."""
    ret = jnp.zeros_like(relative_position)
    n = -relative_position
    if bidirectional:
        num_buckets //= 2
        ret += (n < 0).astype(jnp.int32) * num_buckets
        n = jnp.abs(n)
    else:
        n = jnp.maximum(n, 0)
    max_exact = num_buckets // 2
    is_small = n < max_exact
    n_safe = jnp.maximum(n, 1).astype(jnp.float32)
    val_if_large = max_exact + (
        jnp.log(n_safe / max_exact) / math.log(max_distance / max_exact) * (num_buckets - max_exact)
    ).astype(jnp.int32)
    val_if_large = jnp.minimum(val_if_large, num_buckets - 1)
    return ret + jnp.where(is_small, n, val_if_large)


def toeplitz(diagonals: jax.Array, length: int) -> jax.Array:
    """[..., 2L - 1] -> [..., L, L] with out[..., i, j] = diagonals[..., j - i + L - 1].

    Row i of the result is a window of the diagonals tiled end to end, starting L - 1 - i
    into a period: a broadcast, a reshape and two slices. Its gradient (what autodiff makes of
    them) is a pad, a reshape and a sum over rows, i.e. the sums along each diagonal.
    """
    width = 2 * length - 1
    if diagonals.shape[-1] != width:
        raise ValueError(
            f"toeplitz of length {length} needs {width} diagonals, got {diagonals.shape[-1]}"
        )
    lead = diagonals.shape[:-1]
    tiled = jnp.broadcast_to(diagonals[..., None, :], lead + (length, width)).reshape(lead + (-1,))
    rows = tiled[..., length - 1 : length - 1 + length * (width - 1)].reshape(
        lead + (length, width - 1)
    )
    return rows[..., :length]


class RelativePositionBias(nn.Module):
    """Learned per-head bias from bucketed relative positions, shared across a T5 stack."""

    num_buckets: int
    max_distance: int
    num_heads: int
    bidirectional: bool
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    def setup(self):
        self.rel_embedding = self.param(
            "rel_embedding",
            nn.with_logical_partitioning(
                nn.initializers.normal(stddev=1.0), ("heads", "relpos_buckets")
            ),
            (self.num_heads, self.num_buckets),
            self.param_dtype,
        )

    def _buckets(self, relative: jax.Array) -> jax.Array:
        return relative_position_bucket(
            relative,
            bidirectional=self.bidirectional,
            num_buckets=self.num_buckets,
            max_distance=self.max_distance,
        )

    def _lookup(self, buckets: jax.Array) -> jax.Array:
        """[heads, *buckets.shape] float32 by a one-hot contraction, whose gradient is a small
        matmul rather than a scatter-add of many values into a few table cells (slow on CPU)."""
        one_hot = jax.nn.one_hot(buckets, self.num_buckets, dtype=jnp.float32)
        return jnp.einsum("...n,hn->h...", one_hot, self.rel_embedding.astype(jnp.float32))

    def __call__(self, query_positions: jax.Array, key_positions: jax.Array) -> jax.Array:
        """Bias [batch, heads, q_len, k_len] from [batch, q_len] and [batch, k_len] positions.

        Pass positions with batch 1 when they are shared by the batch (no packing) to keep
        the bias [1, heads, q, k].
        """
        relative = key_positions[:, None, :] - query_positions[:, :, None]
        buckets = self._buckets(relative)
        if buckets.shape[0] == 1:
            return self._lookup(buckets[0])[None].astype(self.dtype)
        bias = jnp.take(self.rel_embedding, buckets, axis=1)  # [heads, b, q, k]
        return jnp.transpose(bias, (1, 0, 2, 3)).astype(self.dtype)

    def for_length(self, length: int) -> jax.Array:
        """Bias [1, heads, L, L] for positions 0..L-1 on both sides, from its 2L - 1 diagonals.

        Equal to `self(arange(L)[None], arange(L)[None])`, without the [L, L, buckets] one-hot
        that path builds, and with a gradient that sums diagonals instead of contracting it.
        """
        diagonals = self._lookup(self._buckets(jnp.arange(-(length - 1), length)))  # [heads, 2L-1]
        return toeplitz(diagonals, length)[None].astype(self.dtype)
