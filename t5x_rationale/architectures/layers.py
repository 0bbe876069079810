"""Basic layers with logical axis names on every parameter: norm, embedding, dense, MLP."""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from t5x_rationale.architectures.axes import constrain
from t5x_rationale.architectures.position import apply_rope

Dtype = Any
Initializer = Callable[..., jax.Array]

default_kernel_init = nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal")


def _normalize_axes(axes: int | Sequence[int], ndim: int) -> tuple[int, ...]:
    axes = (axes,) if isinstance(axes, int) else tuple(axes)
    return tuple(a % ndim for a in axes)


class RMSNorm(nn.Module):
    """Root-mean-square layer norm without bias or mean subtraction (T5, Llama)."""

    epsilon: float = 1e-6
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        scale = self.param(
            "scale",
            nn.with_logical_partitioning(nn.initializers.ones, ("embed",)),
            (x.shape[-1],),
            self.param_dtype,
        )
        x32 = x.astype(jnp.float32)
        y = x32 * lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.epsilon)
        return (y * scale.astype(jnp.float32)).astype(self.dtype)


class Embed(nn.Module):
    """Token embedding table [vocab, embed]; `attend` gives logits for tied output layers."""

    num_embeddings: int
    features: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    embedding_init: Initializer = nn.initializers.normal(stddev=1.0)

    def setup(self):
        self.embedding = self.param(
            "embedding",
            nn.with_logical_partitioning(self.embedding_init, ("vocab", "embed")),
            (self.num_embeddings, self.features),
            self.param_dtype,
        )

    def __call__(self, tokens: jax.Array) -> jax.Array:
        if not jnp.issubdtype(tokens.dtype, jnp.integer):
            raise ValueError(f"Embed expects integer token ids, got {tokens.dtype}")
        # Gather whole embedding rows: an fsdp-split embed dim would leave the lookup sharded
        # against the batch and force XLA to replicate the result.
        table = constrain(self.embedding, ("vocab", None))
        return jnp.take(table, tokens, axis=0).astype(self.dtype)

    def attend(self, x: jax.Array) -> jax.Array:
        """Logits against the embedding table, accumulated in float32."""
        return jnp.einsum(
            "...d,vd->...v",
            x.astype(self.dtype),
            self.embedding.astype(self.dtype),
            preferred_element_type=jnp.float32,
        )


class DenseGeneral(nn.Module):
    """Dense layer contracting `axis` of the input with the first dims of a named kernel.

    Attributes:
      features: output feature shape.
      kernel_axes: logical names of every kernel dimension (inputs then outputs).
      axis: input axes to contract.
      out_float32: accumulate and return float32 (used for logits).
      rope_theta: rotate the output [..., heads, head_dim] by RoPE at the given positions
        (queries and keys), so that the projection's output is the rotated value.
      rope_scaling: RoPE's frequency scaling (`DecoderConfig.rope_scaling`), or None.
      use_bias: add a bias of the output shape (named by the output kernel axes), before
        any rotation.
    """

    features: int | Sequence[int]
    kernel_axes: Sequence[str]
    axis: int | Sequence[int] = -1
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    kernel_init: Initializer = default_kernel_init
    out_float32: bool = False
    rope_theta: Optional[float] = None
    rope_scaling: Optional[tuple] = None
    use_bias: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, positions: Optional[jax.Array] = None) -> jax.Array:
        axis = _normalize_axes(self.axis, x.ndim)
        kernel_shape = tuple(x.shape[a] for a in axis) + self._features()
        if len(self.kernel_axes) != len(kernel_shape):
            raise ValueError(
                f"{self.name}: kernel_axes {self.kernel_axes} do not match kernel "
                f"shape {kernel_shape}"
            )
        kernel = self.param(
            "kernel",
            nn.with_logical_partitioning(
                _fan_in_init(self.kernel_init, len(axis)), tuple(self.kernel_axes)
            ),
            kernel_shape,
            self.param_dtype,
        )
        bias = None
        if self.use_bias:
            bias = self.param(
                "bias",
                nn.with_logical_partitioning(
                    nn.initializers.zeros, tuple(self.kernel_axes[len(axis) :])
                ),
                self._features(),
                self.param_dtype,
            )
        return self.project(x, kernel, bias, positions)

    def project(self, x: jax.Array, kernel: jax.Array, bias=None, positions=None) -> jax.Array:
        """The layer as a function of its params (`bias` None without one): the one method to
        intercept for taking a projection's output from elsewhere (Quiet-STaR records and
        replays them)."""
        features, axis = self._features(), _normalize_axes(self.axis, x.ndim)
        out_type = jnp.float32 if self.out_float32 else None
        x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
        if axis == tuple(range(x.ndim - len(axis), x.ndim)):  # trailing axes: a 2-D matmul
            k, f = math.prod(kernel.shape[: len(axis)]), math.prod(features)
            y = token_matmul(x.reshape(-1, k), kernel.reshape(k, f), out_type).reshape(
                x.shape[: x.ndim - len(axis)] + features
            )
        else:
            contract = (axis, tuple(range(len(axis))))
            y = lax.dot_general(x, kernel, (contract, ((), ())), preferred_element_type=out_type)
        if bias is not None:
            y = y + bias.astype(y.dtype)
        y = y if self.out_float32 else y.astype(self.dtype)
        if self.rope_theta is None:
            return y
        return apply_rope(y, positions, self.rope_theta, self.rope_scaling)

    @nn.nowrap
    def _features(self) -> tuple[int, ...]:
        return (self.features,) if isinstance(self.features, int) else tuple(self.features)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def token_matmul(x: jax.Array, w: jax.Array, out_type=None) -> jax.Array:
    """[tokens, k] @ [k, f] whose weight gradient transposes the narrower of x and dy.

    The weight gradient contracts over tokens, so one [tokens, width] operand is transposed
    first. Autodiff's choice transposes the output cotangent, which XLA on CPU fuses with the
    elementwise code producing it (the gated-MLP backward) into a slow strided loop; taking
    the narrower operand (x for an up-projection, dy for a down-projection) moves the least
    memory and leaves the wide activation gradient untouched.
    """
    return jnp.matmul(x, w, preferred_element_type=out_type)


def _token_matmul_fwd(x, w, out_type):
    return token_matmul(x, w, out_type), (x, w)


def _token_matmul_bwd(out_type, residuals, dy):
    del out_type  # the gradients take the input dtypes whatever the output dtype
    x, w = residuals
    dy = dy.astype(x.dtype)
    dx = lax.dot_general(dy, w, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32)
    tokens = (((0,), (0,)), ((), ()))
    if x.shape[1] <= dy.shape[1]:
        dw = lax.dot_general(x, dy, tokens, preferred_element_type=jnp.float32)
    else:
        dw = lax.dot_general(dy, x, tokens, preferred_element_type=jnp.float32).T
    return dx.astype(x.dtype), dw.astype(w.dtype)


token_matmul.defvjp(_token_matmul_fwd, _token_matmul_bwd)


def _fan_in_init(init: Initializer, num_in_axes: int) -> Initializer:
    """Wraps an initializer so multi-dim kernels use the product of input dims as fan-in."""

    def wrapped(key, shape, dtype=jnp.float32):
        flat = (math.prod(shape[:num_in_axes]), math.prod(shape[num_in_axes:]))
        return init(key, flat, dtype).reshape(shape)

    return wrapped


_ACTIVATIONS = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=True),
    "silu": jax.nn.silu,
    "relu": jax.nn.relu,
    "linear": lambda x: x,
}


class GatedMlp(nn.Module):
    """Gated MLP: prod_i act_i(x W_i) then W_o. T5 v1.1 gated-GELU, Llama SwiGLU."""

    mlp_dim: int
    activations: Sequence[str] = ("gelu", "linear")
    dropout_rate: float = 0.0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool = True) -> jax.Array:
        unknown = [a for a in self.activations if a not in _ACTIVATIONS]
        if unknown:
            raise ValueError(f"unknown MLP activation(s) {unknown}; known {sorted(_ACTIVATIONS)}")
        hidden = None
        for i, act in enumerate(self.activations):
            h = DenseGeneral(
                self.mlp_dim,
                ("embed", "mlp"),
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                name=f"wi_{i}",
            )(x)
            h = _ACTIVATIONS[act](h)
            hidden = h if hidden is None else hidden * h
        hidden = constrain(hidden, ("batch", "length", "mlp"))
        hidden = nn.Dropout(self.dropout_rate, broadcast_dims=(-2,))(
            hidden, deterministic=deterministic
        )
        return DenseGeneral(
            x.shape[-1], ("mlp", "embed"), dtype=self.dtype, param_dtype=self.param_dtype, name="wo"
        )(hidden)
