"""Which Hugging Face tensor holds each of our params, and how its layout maps to ours.

HF stores a linear layer as `weight [out, in]` (applied as `x @ W.T`); we store
`kernel [in, ...out]` with attention heads split out: a query kernel is
`[embed, heads, head_dim]`, an output kernel `[heads, head_dim, embed]`. A `Layout` says
how to view the HF tensor as ours: reshape it (free for row-major data), then permute the
axes. Because the reshape only splits axes, a slice of our param is a slice of the HF
tensor, so each host can read just the part its devices hold.
"""

from __future__ import annotations

import dataclasses
from typing import Iterator, Optional

import numpy as np

from t5x_rationale.architectures.configs import DecoderConfig, T5Config


@dataclasses.dataclass(frozen=True)
class Layout:
    """HF tensor -> our param: `reshape` the HF tensor (splitting axes), then `transpose`."""

    reshape: Optional[tuple[int, ...]] = None  # None: keep the HF shape
    transpose: Optional[tuple[int, ...]] = None  # None: keep the axis order
    hf_shape: Optional[tuple[int, ...]] = None  # given when `reshape` splits an axis

    def split_and_order(self, hf_shape: tuple[int, ...]) -> tuple[tuple[int, ...], tuple]:
        """(the HF shape after `reshape`, the axis order `transpose` applies to it)."""
        split = self.reshape or hf_shape
        return split, self.transpose or tuple(range(len(split)))

    def to_ours(self, hf: np.ndarray) -> np.ndarray:
        x = hf if self.reshape is None else hf.reshape(self.reshape)
        return x if self.transpose is None else np.transpose(x, self.transpose)

    def to_hf(self, ours: np.ndarray) -> np.ndarray:
        x = ours if self.transpose is None else np.transpose(ours, np.argsort(self.transpose))
        return np.ascontiguousarray(x).reshape(self.hf_shape or x.shape)


SAME = Layout()
LINEAR = Layout(transpose=(1, 0))  # [out, in] -> [in, out]
RELPOS = LINEAR  # [buckets, heads] -> [heads, buckets]


def heads_in(heads: int, head_dim: int, embed: int) -> Layout:
    """q/k/v: [heads * head_dim, embed] -> [embed, heads, head_dim]."""
    return Layout((heads, head_dim, embed), (2, 0, 1), hf_shape=(heads * head_dim, embed))


def heads_bias(heads: int, head_dim: int) -> Layout:
    """q/k/v bias: [heads * head_dim] -> [heads, head_dim]."""
    return Layout((heads, head_dim), hf_shape=(heads * head_dim,))


def heads_out(heads: int, head_dim: int, embed: int) -> Layout:
    """o: [embed, heads * head_dim] -> [heads, head_dim, embed]."""
    return Layout((embed, heads, head_dim), (1, 2, 0), hf_shape=(embed, heads * head_dim))


@dataclasses.dataclass(frozen=True)
class Mapping:
    path: tuple[str, ...]  # our param path under `params`
    hf_name: str
    layout: Layout


def decoder_mappings(c: DecoderConfig) -> Iterator[Mapping]:
    """Llama / Mistral / Qwen2 (`model.*`, `lm_head`)."""
    yield Mapping(("token_embedder", "embedding"), "model.embed_tokens.weight", SAME)
    q = heads_in(c.num_heads, c.head_dim, c.emb_dim)
    kv = heads_in(c.kv_heads, c.head_dim, c.emb_dim)
    out = heads_out(c.num_heads, c.head_dim, c.emb_dim)
    for i in range(c.num_layers):
        ours, hf = ("decoder", f"layers_{i}"), f"model.layers.{i}"
        attention = {"query": ("q_proj", q), "key": ("k_proj", kv), "value": ("v_proj", kv)}
        attention["out"] = ("o_proj", out)
        for name, (proj, layout) in attention.items():
            yield Mapping(
                (*ours, "self_attention", name, "kernel"), f"{hf}.self_attn.{proj}.weight", layout
            )
        if c.attention_bias:
            yield from _qkv_biases(c, ours, hf)
        for name, proj in (("wi_0", "gate_proj"), ("wi_1", "up_proj"), ("wo", "down_proj")):
            yield Mapping((*ours, "mlp", name, "kernel"), f"{hf}.mlp.{proj}.weight", LINEAR)
        norms = {"pre_self_attention_layer_norm": "input_layernorm"}
        norms["pre_mlp_layer_norm"] = "post_attention_layernorm"
        for name, norm in norms.items():
            yield Mapping((*ours, name, "scale"), f"{hf}.{norm}.weight", SAME)
    yield Mapping(("decoder", "decoder_norm", "scale"), "model.norm.weight", SAME)
    if not c.tie_embeddings:
        yield Mapping(("decoder", "logits_dense", "kernel"), "lm_head.weight", LINEAR)


def _qkv_biases(c: DecoderConfig, ours: tuple[str, ...], hf: str) -> Iterator[Mapping]:
    """One layer's q/k/v projection biases (Qwen2; `o_proj` has none)."""
    for name, proj, heads in (
        ("query", "q_proj", c.num_heads),
        ("key", "k_proj", c.kv_heads),
        ("value", "v_proj", c.kv_heads),
    ):
        yield Mapping(
            (*ours, "self_attention", name, "bias"),
            f"{hf}.self_attn.{proj}.bias",
            heads_bias(heads, c.head_dim),
        )


def t5_mappings(c: T5Config) -> Iterator[Mapping]:
    """T5 v1.1 / Flan-T5 / mT5 / original T5 (`shared`, `encoder.block.*`, `decoder.block.*`)."""
    yield Mapping(("token_embedder", "embedding"), "shared.weight", SAME)
    for stack, layers in (("encoder", c.num_encoder_layers), ("decoder", c.num_decoder_layers)):
        yield Mapping(
            (stack, "relpos_bias", "rel_embedding"),
            f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
            RELPOS,
        )
        for i in range(layers):
            yield from _t5_block(c, stack, i)
        yield Mapping((stack, f"{stack}_norm", "scale"), f"{stack}.final_layer_norm.weight", SAME)
    if not c.logits_via_embedding:
        yield Mapping(("decoder", "logits_dense", "kernel"), "lm_head.weight", LINEAR)


def _t5_block(c: T5Config, stack: str, i: int) -> Iterator[Mapping]:
    ours, hf = (stack, f"layers_{i}"), f"{stack}.block.{i}.layer"
    if stack == "encoder":
        sublayers = [("attention", "SelfAttention", "pre_attention_layer_norm")]
    else:
        sublayers = [
            ("self_attention", "SelfAttention", "pre_self_attention_layer_norm"),
            ("encoder_decoder_attention", "EncDecAttention", "pre_cross_attention_layer_norm"),
        ]
    qkv = heads_in(c.num_heads, c.head_dim, c.emb_dim)
    out = heads_out(c.num_heads, c.head_dim, c.emb_dim)
    for k, (attention, hf_attention, norm) in enumerate(sublayers):
        for name, proj in (("query", "q"), ("key", "k"), ("value", "v"), ("out", "o")):
            layout = out if name == "out" else qkv
            yield Mapping(
                (*ours, attention, name, "kernel"), f"{hf}.{k}.{hf_attention}.{proj}.weight", layout
            )
        yield Mapping((*ours, norm, "scale"), f"{hf}.{k}.layer_norm.weight", SAME)
    mlp = len(sublayers)
    hf_inputs = ["wi"] if len(c.mlp_activations) == 1 else ["wi_0", "wi_1"]
    for j, hf_input in enumerate(hf_inputs):
        yield Mapping(
            (*ours, "mlp", f"wi_{j}", "kernel"),
            f"{hf}.{mlp}.DenseReluDense.{hf_input}.weight",
            LINEAR,
        )
    yield Mapping((*ours, "mlp", "wo", "kernel"), f"{hf}.{mlp}.DenseReluDense.wo.weight", LINEAR)
    yield Mapping((*ours, "pre_mlp_layer_norm", "scale"), f"{hf}.{mlp}.layer_norm.weight", SAME)


def mappings(config) -> list[Mapping]:
    if isinstance(config, DecoderConfig):
        return list(decoder_mappings(config))
    return list(t5_mappings(config))


# Tensors HF checkpoints may carry that hold nothing of ours: copies of tied embeddings and
# rotary caches.
IGNORED_SUFFIXES = (".rotary_emb.inv_freq",)
TIED_COPIES = ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight")
