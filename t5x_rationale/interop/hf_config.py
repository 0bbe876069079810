"""Hugging Face `config.json` to our model configs and back.

Decoders: `llama`, `mistral`, `qwen2` (`DecoderConfig`); encoder-decoders: `t5`, `mt5`
(`T5Config`: gated-GELU T5 v1.1 / Flan-T5 / mT5, or ReLU original T5 with tied
embeddings). A value we do not model is an `HfConfigError` naming the file and the field,
never a silent approximation.
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping, Optional, Union

from t5x_rationale.architectures.configs import (
    LLAMA3_ROPE_FIELDS,
    DecoderConfig,
    T5Config,
    check_rope_scaling,
)

ModelConfig = Union[DecoderConfig, T5Config]
DECODER_TYPES = ("llama", "mistral", "qwen2")
T5_TYPES = ("t5", "mt5")
# HF `feed_forward_proj` -> our MLP activations (gated: one input projection per entry).
_T5_MLPS = {"gated-gelu": ("gelu", "linear"), "relu": ("relu",), "gated-silu": ("silu", "linear")}


class HfConfigError(ValueError):
    """A config.json value this project does not model (named with its file and field)."""


def read_hf_config(directory: str, **dtypes: str) -> ModelConfig:
    """The model config of a Hugging Face model directory's `config.json`."""
    path = os.path.join(directory, "config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no config.json in {directory} (a Hugging Face model directory)")
    with open(path, encoding="utf-8") as f:
        try:
            hf = json.load(f)
        except json.JSONDecodeError as e:
            raise HfConfigError(f"{path} is not JSON: {e}") from e
    return from_hf_config(hf, source=path, **dtypes)


def from_hf_config(
    hf: Mapping[str, Any],
    *,
    source: str = "config.json",
    dtype: str = "float32",
    param_dtype: str = "float32",
) -> ModelConfig:
    """Our config for the HF config `hf` (`source` names it in errors)."""
    reader = _Fields(hf, source)
    model_type = reader.required("model_type")
    common = {"dtype": dtype, "param_dtype": param_dtype}
    if model_type in DECODER_TYPES:
        return _decoder_config(reader, model_type, common)
    if model_type in T5_TYPES:
        return _t5_config(reader, common)
    raise HfConfigError(
        f"{source}: model_type {model_type!r} is not supported "
        f"(supported: {', '.join(DECODER_TYPES + T5_TYPES)})"
    )


class _Fields:
    """Reads fields of one config, naming the file and field in every error."""

    def __init__(self, hf: Mapping[str, Any], source: str):
        self.hf, self.source = hf, source

    def required(self, name: str) -> Any:
        if name not in self.hf:
            raise HfConfigError(f"{self.source}: field {name!r} is missing")
        return self.hf[name]

    def get(self, name: str, default: Any = None) -> Any:
        value = self.hf.get(name)
        return default if value is None else value

    def expect(self, name: str, allowed: tuple, default: Any = None) -> Any:
        value = self.get(name, default)
        if value not in allowed:
            raise HfConfigError(
                f"{self.source}: {name}={value!r} is not supported (supported: {list(allowed)})"
            )
        return value


def _rope(r: _Fields) -> tuple[float, Optional[tuple]]:
    """RoPE's base and scaling (`DecoderConfig.rope_scaling`): from `rope_parameters`
    (transformers 5), else `rope_theta` and `rope_scaling` (4.x). Rope types other than
    default and llama3 are errors."""
    legacy = r.get("rope_scaling")
    legacy = None if legacy is None else _rope_scaling(r, legacy, "rope_scaling")
    rope = r.get("rope_parameters")
    if rope is None:
        return float(r.get("rope_theta", 10000.0)), legacy
    scaling = _rope_scaling(r, rope, "rope_parameters")
    if r.get("rope_scaling") is not None and legacy != scaling:
        raise HfConfigError(
            f"{r.source}: rope_scaling={r.get('rope_scaling')!r} disagrees with "
            f"rope_parameters={rope!r}"
        )
    return float(rope.get("rope_theta", 10000.0)), scaling


def _rope_scaling(r: _Fields, rope: Mapping[str, Any], field: str) -> Optional[tuple]:
    """The scaling of one rope dict (`rope_type`, older files `type`); `field` names it."""
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type == "default":
        return None
    if rope_type != "llama3":
        raise HfConfigError(
            f"{r.source}: {field}.rope_type={rope_type!r} is not supported "
            "(supported: ['default', 'llama3'])"
        )
    missing = [name for name in LLAMA3_ROPE_FIELDS if rope.get(name) is None]
    if missing:
        raise HfConfigError(f"{r.source}: {field} of rope_type 'llama3' lacks {missing}")
    factor, low, high, original = (rope[name] for name in LLAMA3_ROPE_FIELDS)
    scaling = ("llama3", float(factor), float(low), float(high), original)
    try:
        check_rope_scaling(scaling)
    except ValueError as e:
        raise HfConfigError(f"{r.source}: {field}: {e}") from e
    return scaling


def _decoder_config(r: _Fields, model_type: str, common: dict) -> DecoderConfig:
    r.expect("hidden_act", ("silu",), "silu")
    r.expect("mlp_bias", (False,), False)
    # Qwen2 always projects q, k and v with biases (transformers reads no field for it);
    # Llama's `attention_bias` would bias o_proj too, which we do not model.
    bias = model_type == "qwen2"
    r.expect("attention_bias", (bias,), bias)
    window = r.get("sliding_window") if model_type == "mistral" else None
    if model_type == "qwen2":
        r.expect("use_sliding_window", (False,), False)
    heads = r.required("num_attention_heads")
    hidden = r.required("hidden_size")
    theta, scaling = _rope(r)
    return DecoderConfig(
        vocab_size=r.required("vocab_size"),
        emb_dim=hidden,
        num_heads=heads,
        head_dim=r.get("head_dim", hidden // heads),
        mlp_dim=r.required("intermediate_size"),
        num_layers=r.required("num_hidden_layers"),
        num_kv_heads=r.get("num_key_value_heads", heads),
        rope_theta=theta,
        rope_scaling=scaling,
        sliding_window=window,
        layer_norm_epsilon=float(r.get("rms_norm_eps", 1e-6)),
        tie_embeddings=bool(r.get("tie_word_embeddings", False)),
        attention_bias=bias,
        **common,
    )


def _t5_config(r: _Fields, common: dict) -> T5Config:
    activations = _T5_MLPS[r.expect("feed_forward_proj", tuple(_T5_MLPS), "relu")]
    layers = r.required("num_layers")
    tied = bool(r.get("tie_word_embeddings", True))
    # transformers 5 ties every T5 and keeps the v1.1 / original difference in this flag.
    if tied and not r.get("scale_decoder_outputs", True):
        raise HfConfigError(
            f"{r.source}: tie_word_embeddings=true with scale_decoder_outputs=false (tied "
            "logits without the d_model**-0.5 scale) is not supported"
        )
    return T5Config(
        vocab_size=r.required("vocab_size"),
        emb_dim=r.required("d_model"),
        num_heads=r.required("num_heads"),
        head_dim=r.required("d_kv"),
        mlp_dim=r.required("d_ff"),
        num_encoder_layers=layers,
        num_decoder_layers=r.get("num_decoder_layers", layers),
        relative_attention_num_buckets=r.get("relative_attention_num_buckets", 32),
        relative_attention_max_distance=r.get("relative_attention_max_distance", 128),
        logits_via_embedding=tied,
        layer_norm_epsilon=float(r.get("layer_norm_epsilon", 1e-6)),
        mlp_activations=activations,
        **common,
    )


def to_hf_config(config: ModelConfig, *, model_type: str) -> dict:
    """The HF config.json fields of `config` as `model_type` (the inverse of `from_hf_config`
    on every field it reads)."""
    if isinstance(config, DecoderConfig):
        if model_type not in DECODER_TYPES:
            raise HfConfigError(f"a decoder exports as one of {DECODER_TYPES}, not {model_type!r}")
        return _decoder_fields(config, model_type)
    if model_type not in T5_TYPES:
        raise HfConfigError(f"an encoder-decoder exports as one of {T5_TYPES}, not {model_type!r}")
    return _t5_fields(config, model_type)


_ARCHITECTURES = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "t5": "T5ForConditionalGeneration",
    "mt5": "MT5ForConditionalGeneration",
}


def _decoder_fields(c: DecoderConfig, model_type: str) -> dict:
    if c.sliding_window is not None and model_type != "mistral":
        raise HfConfigError(f"sliding_window={c.sliding_window} exports only as mistral")
    if c.attention_bias != (model_type == "qwen2"):
        raise HfConfigError(
            f"attention_bias={c.attention_bias} does not export as {model_type}: q/k/v "
            "biases (and only they) are qwen2's"
        )
    fields = {
        "architectures": [_ARCHITECTURES[model_type]],
        "model_type": model_type,
        "vocab_size": c.vocab_size,
        "hidden_size": c.emb_dim,
        "num_attention_heads": c.num_heads,
        "head_dim": c.head_dim,
        "intermediate_size": c.mlp_dim,
        "num_hidden_layers": c.num_layers,
        "num_key_value_heads": c.kv_heads,
        # transformers 4.x reads rope_theta and rope_scaling, 5.x rope_parameters
        "rope_theta": c.rope_theta,
        "rope_scaling": _rope_fields(c.rope_scaling),
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": c.rope_theta,
            **(_rope_fields(c.rope_scaling) or {}),
        },
        "rms_norm_eps": c.layer_norm_epsilon,
        "tie_word_embeddings": c.tie_embeddings,
        "hidden_act": "silu",
        "mlp_bias": False,
    }
    if model_type == "mistral":
        fields["sliding_window"] = c.sliding_window
    if model_type != "qwen2":  # qwen2 has no such field: its q/k/v biases are always there
        fields["attention_bias"] = False
    return fields


def _rope_fields(scaling: Optional[tuple]) -> Optional[dict]:
    """HF's rope scaling dict of `DecoderConfig.rope_scaling` (None for none)."""
    if scaling is None:
        return None
    return {"rope_type": scaling[0], **dict(zip(LLAMA3_ROPE_FIELDS, scaling[1:]))}


def _t5_fields(c: T5Config, model_type: str) -> dict:
    projections = {v: k for k, v in _T5_MLPS.items()}
    if tuple(c.mlp_activations) not in projections:
        raise HfConfigError(f"mlp_activations {c.mlp_activations} have no HF feed_forward_proj")
    return {
        "architectures": [_ARCHITECTURES[model_type]],
        "model_type": model_type,
        "vocab_size": c.vocab_size,
        "d_model": c.emb_dim,
        "num_heads": c.num_heads,
        "d_kv": c.head_dim,
        "d_ff": c.mlp_dim,
        "num_layers": c.num_encoder_layers,
        "num_decoder_layers": c.num_decoder_layers,
        "relative_attention_num_buckets": c.relative_attention_num_buckets,
        "relative_attention_max_distance": c.relative_attention_max_distance,
        "tie_word_embeddings": c.logits_via_embedding,
        "layer_norm_epsilon": c.layer_norm_epsilon,
        "feed_forward_proj": projections[tuple(c.mlp_activations)],
        "is_encoder_decoder": True,
    }
