"""Model configurations: frozen, validated dataclasses and the named size presets.

Configs are gin-free plain data so that library code, tests and benchmarks can build
models without a launch configuration; gin files bind presets by name.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import jax.numpy as jnp

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch")
ATTENTION_IMPLEMENTATIONS = ("xla", "cudnn", "auto")


def resolve_dtype(name: str):
    """Maps a dtype name from a config to the jnp dtype."""
    if name not in _DTYPES:
        raise ValueError(f"unknown dtype {name!r}; expected one of {sorted(_DTYPES)}")
    return _DTYPES[name]


@dataclasses.dataclass(frozen=True)
class _CommonConfig:
    """Fields shared by every architecture."""

    vocab_size: int
    emb_dim: int
    num_heads: int
    head_dim: int
    mlp_dim: int
    dropout_rate: float = 0.0
    dtype: str = "float32"  # compute dtype of activations and matmuls
    param_dtype: str = "float32"  # storage dtype of parameters
    remat_policy: str = "none"
    scan_layers: bool = False
    attention_impl: str = "xla"

    def _validate_common(self):
        for name in ("vocab_size", "emb_dim", "num_heads", "head_dim", "mlp_dim"):
            if getattr(self, name) <= 0:
                raise ValueError(
                    f"{type(self).__name__}.{name} must be positive, got {getattr(self, name)}"
                )
        if not 0.0 <= self.dropout_rate < 1.0:
            raise ValueError(f"dropout_rate must be in [0, 1), got {self.dropout_rate}")
        resolve_dtype(self.dtype)
        resolve_dtype(self.param_dtype)
        if self.remat_policy not in REMAT_POLICIES:
            raise ValueError(f"remat_policy {self.remat_policy!r} not in {REMAT_POLICIES}")
        if self.attention_impl not in ATTENTION_IMPLEMENTATIONS:
            raise ValueError(
                f"attention_impl {self.attention_impl!r} not in {ATTENTION_IMPLEMENTATIONS}"
            )


@dataclasses.dataclass(frozen=True)
class T5Config(_CommonConfig):
    """T5 v1.1 / Flan-T5 encoder-decoder (RMS norm, relative buckets, gated-GELU MLP)."""

    num_encoder_layers: int = 2
    num_decoder_layers: int = 2
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    logits_via_embedding: bool = False  # True ties the output projection to the embedding
    layer_norm_epsilon: float = 1e-6
    mlp_activations: tuple = ("gelu", "linear")

    def __post_init__(self):
        self._validate_common()
        if self.num_encoder_layers <= 0 or self.num_decoder_layers <= 0:
            raise ValueError("T5Config needs at least one encoder and one decoder layer")
        if self.relative_attention_num_buckets < 2:
            raise ValueError("relative_attention_num_buckets must be >= 2")

    @property
    def architecture(self) -> str:
        return "encoder_decoder"


@dataclasses.dataclass(frozen=True)
class DecoderConfig(_CommonConfig):
    """Llama/Mistral-style decoder-only LM (RoPE, RMSNorm, SwiGLU, grouped-query attention)."""

    num_layers: int = 2
    num_kv_heads: Optional[int] = None  # None: same as num_heads (multi-head attention)
    rope_theta: float = 10000.0
    # None, or Llama 3's frequency scaling: ("llama3", factor, low_freq_factor,
    # high_freq_factor, original_max_position_embeddings) (see position.rope_inv_freq).
    rope_scaling: Optional[tuple] = None
    sliding_window: Optional[int] = None  # attend to at most this many previous tokens
    layer_norm_epsilon: float = 1e-5
    tie_embeddings: bool = False
    attention_bias: bool = False  # biases on the query, key and value projections (Qwen2)

    def __post_init__(self):
        self._validate_common()
        if self.num_layers <= 0:
            raise ValueError(f"DecoderConfig.num_layers must be positive, got {self.num_layers}")
        if self.num_heads % self.kv_heads:
            raise ValueError(
                f"num_heads ({self.num_heads}) must be a multiple of num_kv_heads ({self.kv_heads})"
            )
        if self.head_dim % 2:
            raise ValueError(f"RoPE needs an even head_dim, got {self.head_dim}")
        if self.sliding_window is not None and self.sliding_window <= 0:
            raise ValueError(f"sliding_window must be positive or None, got {self.sliding_window}")
        if self.rope_theta <= 0:
            raise ValueError(f"rope_theta must be positive, got {self.rope_theta}")
        check_rope_scaling(self.rope_scaling)
        if not isinstance(self.attention_bias, bool):
            raise ValueError(f"attention_bias must be True or False, got {self.attention_bias!r}")

    @property
    def kv_heads(self) -> int:
        return self.num_kv_heads or self.num_heads

    @property
    def architecture(self) -> str:
        return "decoder"


ROPE_SCALING_TYPES = ("llama3",)
# The numbers after "llama3" in `DecoderConfig.rope_scaling`, named as Hugging Face names them.
LLAMA3_ROPE_FIELDS = (
    "factor",
    "low_freq_factor",
    "high_freq_factor",
    "original_max_position_embeddings",
)


def check_rope_scaling(scaling) -> None:
    """Raises a ValueError naming what is wrong with a `DecoderConfig.rope_scaling` value."""
    if scaling is None:
        return
    if not isinstance(scaling, tuple) or not scaling or scaling[0] not in ROPE_SCALING_TYPES:
        raise ValueError(
            f"rope_scaling must be None or a tuple starting with one of {ROPE_SCALING_TYPES}, "
            f"got {scaling!r}"
        )
    if len(scaling) != 1 + len(LLAMA3_ROPE_FIELDS):
        raise ValueError(
            f"rope_scaling {scaling!r}: 'llama3' takes ('llama3', {', '.join(LLAMA3_ROPE_FIELDS)})"
        )
    factor, low, high, original = scaling[1:]
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in scaling[1:])
    if not numbers or factor <= 0 or low <= 0 or high <= low:
        raise ValueError(
            f"rope_scaling {scaling!r}: needs factor > 0 and 0 < low_freq_factor < high_freq_factor"
        )
    if not isinstance(original, int) or isinstance(original, bool) or original <= 0:
        raise ValueError(
            f"rope_scaling {scaling!r}: original_max_position_embeddings must be a positive int"
        )


T5_VOCAB = 32128
LLAMA_VOCAB = 32000


def _t5(emb_dim: int, num_heads: int, mlp_dim: int, layers: int, **fields) -> T5Config:
    """A T5 v1.1 shape with `layers` encoder and as many decoder layers."""
    fields = {"vocab_size": T5_VOCAB, "head_dim": 64, **fields}
    return T5Config(
        emb_dim=emb_dim,
        num_heads=num_heads,
        mlp_dim=mlp_dim,
        num_encoder_layers=layers,
        num_decoder_layers=layers,
        **fields,
    )


def _decoder(emb_dim: int, num_heads: int, mlp_dim: int, num_layers: int, **fields):
    """A Llama-style decoder shape."""
    fields = {"vocab_size": LLAMA_VOCAB, "head_dim": 64, **fields}
    return DecoderConfig(
        emb_dim=emb_dim, num_heads=num_heads, mlp_dim=mlp_dim, num_layers=num_layers, **fields
    )


# Tiny sizes for tests: every sharded dimension divides 8 except kv heads (4), which
# exercises the replicate-when-indivisible path of the partitioner.
_TINY = {"vocab_size": 256, "head_dim": 8}
PRESETS = {
    "t5-tiny": _t5(
        64,
        8,
        128,
        2,
        relative_attention_num_buckets=16,
        relative_attention_max_distance=32,
        **_TINY,
    ),
    "t5-small": _t5(512, 6, 1024, 8),
    "t5-base": _t5(768, 12, 2048, 12),
    "t5-large": _t5(1024, 16, 2816, 24),
    "t5-xl": _t5(2048, 32, 5120, 24),
    "t5-xxl": _t5(4096, 64, 10240, 24),
    "decoder-tiny": _decoder(64, 8, 128, 2, num_kv_heads=4, **_TINY),
    "decoder-125m": _decoder(768, 12, 2048, 12),
    "decoder-1b": _decoder(2048, 32, 5632, 22, num_kv_heads=4),
    # Mistral-7B v0.1 shape.
    "decoder-7b": _decoder(
        4096, 32, 14336, 32, num_kv_heads=8, head_dim=128, sliding_window=4096, rope_theta=10000.0
    ),
}


def get_preset(name: str, **overrides) -> T5Config | DecoderConfig:
    """Returns the named preset, with any field overridden (e.g. dtype, scan_layers)."""
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; expected one of {sorted(PRESETS)}")
    base = PRESETS[name]
    fields = {f.name for f in dataclasses.fields(base)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"preset {name!r} has no field(s) {unknown}; fields are {sorted(fields)}")
    return dataclasses.replace(base, **overrides)
