"""One attention function with explicit masks, and the multi-head attention layer.

Masks are boolean, rank 4 and broadcastable to [batch, heads, q_len, k_len], True = may
attend. Biases are additive, rank 4, broadcastable to the same shape. The implementation is
pluggable: ``xla`` (everywhere), ``cudnn`` (fused flash attention on NVIDIA GPUs) and ``auto``.
"""

from __future__ import annotations

import functools
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from t5x_rationale.architectures.axes import constrain
from t5x_rationale.architectures.layers import DenseGeneral, Dtype
from t5x_rationale.architectures.softmax_attention import (
    cached_attention,
    heads_first,
    heads_major,
    probabilities,
    softmax_attention,
    tokens_major,
)

# ----------------------------------------------------------------------------- masks


def causal_mask(query_positions: jax.Array, key_positions: jax.Array) -> jax.Array:
    """[b, 1, q, k]: key position <= query position."""
    return key_positions[:, None, None, :] <= query_positions[:, None, :, None]


def sliding_window_mask(
    query_positions: jax.Array, key_positions: jax.Array, window: int
) -> jax.Array:
    """[b, 1, q, k]: the key is fewer than `window` positions behind the query."""
    return (query_positions[:, None, :, None] - key_positions[:, None, None, :]) < window


def segment_mask(query_segment_ids: jax.Array, key_segment_ids: jax.Array) -> jax.Array:
    """[b, 1, q, k]: same packed segment and neither is padding (segment id 0)."""
    same = query_segment_ids[:, None, :, None] == key_segment_ids[:, None, None, :]
    return (
        same & (key_segment_ids[:, None, None, :] > 0) & (query_segment_ids[:, None, :, None] > 0)
    )


def padding_mask(query_valid: jax.Array, key_valid: jax.Array) -> jax.Array:
    """[b, 1, q, k] from boolean validity of query and key tokens."""
    return query_valid[:, None, :, None] & key_valid[:, None, None, :]


def combine_masks(*masks: Optional[jax.Array]) -> Optional[jax.Array]:
    """Logical AND of the given masks, ignoring None; None if all are None."""
    present = [m for m in masks if m is not None]
    if not present:
        return None
    out = present[0]
    for m in present[1:]:
        out = out & m
    return out


# ------------------------------------------------------------------------ attention op


def _dropout_attention(query, key, value, bias, mask, scale, dropout_rng, dropout_rate):
    """Attention with dropout on the probabilities, differentiated by autodiff."""
    kv_heads, q_len = key.shape[2], query.shape[1]
    qh, kh, vh = (heads_major(x, kv_heads) for x in (query, key, value))
    probs = probabilities(qh, kh, bias, mask, scale, q_len)
    keep = jax.random.bernoulli(dropout_rng, 1.0 - dropout_rate, probs.shape)
    probs = jnp.where(keep, probs / (1.0 - dropout_rate), 0.0)
    return tokens_major(jnp.einsum("bhqk,bhkd->bhqd", probs.astype(value.dtype), vh), q_len)


def _cudnn_usable(query, dropout_active: bool) -> bool:
    return (
        jax.default_backend() == "gpu"
        and query.dtype in (jnp.bfloat16, jnp.float16)
        and not dropout_active
        and query.shape[-1] <= 128
    )


def dot_product_attention(
    query: jax.Array,
    key: jax.Array,
    value: jax.Array,
    *,
    bias: Optional[jax.Array] = None,
    mask: Optional[jax.Array] = None,
    scale: Optional[float] = None,
    implementation: str = "xla",
    dropout_rng: Optional[jax.Array] = None,
    dropout_rate: float = 0.0,
) -> jax.Array:
    """Softmax attention with grouped-query support.

    Args:
      query: [batch, q_len, heads, head_dim].
      key, value: [batch, k_len, kv_heads, head_dim]; heads % kv_heads == 0.
      bias: additive, rank 4, broadcastable to [batch, heads, q_len, k_len].
      mask: boolean, rank 4, broadcastable to [batch, heads, q_len, k_len]; True = attend.
      scale: logit scale; default 1/sqrt(head_dim). T5 uses 1.0.
      implementation: 'xla', 'cudnn' or 'auto' (cuDNN when on GPU with bf16/fp16, no dropout).
      dropout_rng, dropout_rate: attention-probability dropout (XLA path only).

    Returns:
      [batch, q_len, heads, head_dim] in the value dtype.
    """
    if query.shape[2] % key.shape[2]:
        raise ValueError(f"query heads {query.shape[2]} not a multiple of kv heads {key.shape[2]}")
    scale = query.shape[-1] ** -0.5 if scale is None else scale
    dropout_active = dropout_rng is not None and dropout_rate > 0.0
    if implementation == "auto":
        implementation = "cudnn" if _cudnn_usable(query, dropout_active) else "xla"
    if implementation == "cudnn":
        if not _cudnn_usable(query, dropout_active):
            raise ValueError(
                "cudnn attention needs a GPU, bf16/fp16 inputs, head_dim <= 128 and no "
                f"dropout; got backend {jax.default_backend()}, dtype {query.dtype}"
            )
        return jax.nn.dot_product_attention(
            query, key, value, bias=bias, mask=mask, scale=scale, implementation="cudnn"
        )
    if implementation != "xla":
        raise ValueError(f"unknown attention implementation {implementation!r}")
    if dropout_active:
        return _dropout_attention(query, key, value, bias, mask, scale, dropout_rng, dropout_rate)
    return softmax_attention(query, key, value, bias, mask, scale)


# --------------------------------------------------------------------------- the layer


class MultiHeadAttention(nn.Module):
    """Multi-head / grouped-query attention with optional RoPE and a KV cache for decoding.

    Params: query [embed, heads, kv], key/value [embed, kv_heads, kv], out [heads, kv, embed];
    with `qkv_bias`, query/key/value biases [heads or kv_heads, kv] added before RoPE.
    `__call__` is `qkv`, `attend`, then the `out` projection; callers with an attention of
    their own use the pieces. In decode mode the layer keeps `cached_key`/`cached_value`
    [batch, kv_heads, max_len, kv] (heads-major) in the 'cache' collection; the caller
    supplies the write position (`cache_index`) and the mask over all max_len keys, so one
    index lives in the stack rather than in every layer. Writing past max_len is not
    checked inside the jitted step: decoders cap their length.
    """

    num_heads: int
    num_kv_heads: int
    head_dim: int
    out_features: int  # the embedding width the `out` projection returns to
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    dropout_rate: float = 0.0
    scale: Optional[float] = None
    rope_theta: Optional[float] = None  # None: no rotary embedding
    rope_scaling: Optional[tuple] = None  # RoPE frequency scaling (DecoderConfig.rope_scaling)
    qkv_bias: bool = False  # biases on the query, key and value projections (not `out`)
    implementation: str = "xla"
    query_init_scale: float = 1.0

    def setup(self):
        dense = functools.partial(DenseGeneral, dtype=self.dtype, param_dtype=self.param_dtype)
        heads, kv_heads = (self.num_heads, self.head_dim), (self.num_kv_heads, self.head_dim)
        q_init = nn.initializers.variance_scaling(
            self.query_init_scale, "fan_in", "truncated_normal"
        )
        qkv = functools.partial(dense, use_bias=self.qkv_bias)
        rope = functools.partial(qkv, rope_theta=self.rope_theta, rope_scaling=self.rope_scaling)
        self.query = rope(heads, ("embed", "heads", "kv"), kernel_init=q_init)
        self.key = rope(kv_heads, ("embed", "kv_heads", "kv"))
        self.value = qkv(kv_heads, ("embed", "kv_heads", "kv"))
        self.out = dense(self.out_features, ("heads", "kv", "embed"), axis=(-2, -1))

    def __call__(
        self,
        inputs_q: jax.Array,
        inputs_kv: jax.Array,
        *,
        mask: Optional[jax.Array] = None,
        bias: Optional[jax.Array] = None,
        query_positions: Optional[jax.Array] = None,
        key_positions: Optional[jax.Array] = None,
        decode: bool = False,
        cache_index: Optional[jax.Array] = None,
        deterministic: bool = True,
        static_kv: bool = False,
    ) -> jax.Array:
        """`static_kv`: `inputs_kv` is the same at every decode step (cross attention), so in
        decode mode its keys and values are projected once, by the init pass, and cached."""
        if decode and static_kv and self.has_variable("cache", "cached_key"):
            query = constrain(
                self.query(inputs_q, query_positions), ("batch", "length", "heads", "kv")
            )
            key = value = None
        else:
            query, key, value = self.qkv(inputs_q, inputs_kv, query_positions, key_positions)
        out = self.attend(
            query,
            key,
            value,
            mask=mask,
            bias=bias,
            decode=decode,
            cache_index=cache_index,
            deterministic=deterministic,
            static_kv=static_kv,
        )
        return self.out(out)

    def qkv(self, inputs_q, inputs_kv, query_positions=None, key_positions=None):
        """Queries [batch, q_len, heads, kv], keys and values [batch, k_len, kv_heads, kv];
        queries and keys rotated at their positions when `rope_theta` is set."""
        query = self.query(inputs_q, query_positions)
        key = self.key(inputs_kv, key_positions)
        value = self.value(inputs_kv)
        return (
            constrain(query, ("batch", "length", "heads", "kv")),
            constrain(key, ("batch", "length", "kv_heads", "kv")),
            constrain(value, ("batch", "length", "kv_heads", "kv")),
        )

    @nn.compact  # the decode cache's variables are created here
    def attend(
        self, query, key, value, *, mask, bias, decode, cache_index, deterministic, static_kv=False
    ) -> jax.Array:
        """Attention of projected queries over keys and values (and the cache when decoding):
        [batch, q_len, heads, kv], before the `out` projection."""
        if decode:
            cached_key, cached_value = self._decode_cache(key, value, cache_index, static_kv)
            out = cached_attention(query, cached_key, cached_value, bias, mask, self.scale)
            return constrain(out, ("batch", "length", "heads", "kv"))
        dropout_rng = None
        if not deterministic and self.dropout_rate > 0.0:
            dropout_rng = self.make_rng("dropout")
        out = dot_product_attention(
            query,
            key,
            value,
            bias=bias,
            mask=mask,
            scale=self.scale,
            implementation=self.implementation,
            dropout_rng=dropout_rng,
            dropout_rate=self.dropout_rate,
        )
        return constrain(out, ("batch", "length", "heads", "kv"))

    def _decode_cache(self, key, value, cache_index, static_kv: bool):
        """The whole cache, heads-major [batch, kv_heads, max_len, kv], after writing this
        call's keys/values at `cache_index`.

        Heads-major is the layout the attention matmuls read, so a step reads the cache in
        place instead of transposing all of it. The init pass creates the cache: its input
        length is the cache length (zeros), or, with `static_kv`, its keys and values are
        the cache and later calls only read it (they pass key = value = None).
        """
        if static_kv:
            cached_key = self.variable("cache", "cached_key", heads_first, key)
            cached_value = self.variable("cache", "cached_value", heads_first, value)
            return cached_key.value, cached_value.value
        is_initialized = self.has_variable("cache", "cached_key")
        key, value = heads_first(key), heads_first(value)
        cached_key = self.variable("cache", "cached_key", jnp.zeros, key.shape, key.dtype)
        cached_value = self.variable("cache", "cached_value", jnp.zeros, value.shape, value.dtype)
        if not is_initialized:
            return key, value
        if cache_index is None:
            raise ValueError("decode=True needs cache_index")
        start = (0, 0, cache_index, 0)
        cached_key.value = jax.lax.dynamic_update_slice(
            cached_key.value, key.astype(cached_key.value.dtype), start
        )
        cached_value.value = jax.lax.dynamic_update_slice(
            cached_value.value, value.astype(cached_value.value.dtype), start
        )
        return cached_key.value, cached_value.value
