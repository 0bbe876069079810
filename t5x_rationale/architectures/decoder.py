"""Decoder-only LM in the Llama/Mistral family: RoPE, RMSNorm, SwiGLU, grouped-query attention.

Param tree: token_embedder/embedding; decoder/{layers_i/{pre_self_attention_layer_norm,
self_attention/{query,key,value,out}, pre_mlp_layer_norm, mlp/{wi_0 (gate), wi_1 (up),
wo (down)}}, decoder_norm, logits_dense}.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from t5x_rationale.architectures import attention as attn
from t5x_rationale.architectures.axes import constrain
from t5x_rationale.architectures.configs import DecoderConfig, resolve_dtype
from t5x_rationale.architectures.decode_cache import advance_decode_positions
from t5x_rationale.architectures.layers import DenseGeneral, Embed, GatedMlp, RMSNorm
from t5x_rationale.architectures.stack import repeat_layer

_ACT = ("batch", "length", "embed")


class DecoderLayer(nn.Module):
    config: DecoderConfig
    deterministic: bool = True
    decode: bool = False

    @nn.compact
    def __call__(self, x, mask, positions, cache_index):
        c = self.config
        dtype, param_dtype = resolve_dtype(c.dtype), resolve_dtype(c.param_dtype)
        dropout = nn.Dropout(c.dropout_rate, broadcast_dims=(-2,))
        h = RMSNorm(c.layer_norm_epsilon, dtype, param_dtype, name="pre_self_attention_layer_norm")(
            x
        )
        h = attn.MultiHeadAttention(
            num_heads=c.num_heads,
            num_kv_heads=c.kv_heads,
            head_dim=c.head_dim,
            dtype=dtype,
            param_dtype=param_dtype,
            dropout_rate=c.dropout_rate,
            rope_theta=c.rope_theta,
            implementation=c.attention_impl,
            name="self_attention",
        )(
            h,
            h,
            mask=mask,
            query_positions=positions,
            key_positions=positions,
            decode=self.decode,
            cache_index=cache_index,
            deterministic=self.deterministic,
        )
        x = constrain(x + dropout(h, deterministic=self.deterministic), _ACT)
        h = RMSNorm(c.layer_norm_epsilon, dtype, param_dtype, name="pre_mlp_layer_norm")(x)
        h = GatedMlp(c.mlp_dim, ("silu", "linear"), c.dropout_rate, dtype, param_dtype, name="mlp")(
            h, deterministic=self.deterministic
        )
        x = constrain(x + dropout(h, deterministic=self.deterministic), _ACT)
        return x, None


def _training_mask(c: DecoderConfig, positions, segment_ids, causal_attention):
    """Causal (by position) + packing + sliding window + bidirectional prefix (prefix LM)."""
    mask = attn.causal_mask(positions, positions)
    if causal_attention is not None:  # T5X name: True on input (prefix) tokens
        prefix = causal_attention.astype(bool)
        mask = mask | (prefix[:, None, :, None] & prefix[:, None, None, :])
    if c.sliding_window is not None:
        mask = mask & attn.sliding_window_mask(positions, positions, c.sliding_window)
    if segment_ids is not None:
        mask = mask & attn.segment_mask(segment_ids, segment_ids)
    return mask


class DecoderStack(nn.Module):
    config: DecoderConfig
    embedder: Embed

    @nn.compact
    def __call__(
        self,
        tokens,
        segment_ids=None,
        positions=None,
        causal_attention=None,
        deterministic=True,
        decode=False,
    ):
        c = self.config
        if decode:
            given = [
                n
                for n, v in (
                    ("segment_ids", segment_ids),
                    ("positions", positions),
                    ("causal_attention", causal_attention),
                )
                if v is not None
            ]
            if given:  # the cache holds one unpacked, causal sequence per row
                raise ValueError(
                    f"decode=True does not support {given}; prefill packed or prefix-LM "
                    "prompts without the cache"
                )
            q_pos, k_pos, cache_index = advance_decode_positions(self, tokens)
            mask = attn.causal_mask(q_pos, k_pos)
            if c.sliding_window is not None:
                mask = mask & attn.sliding_window_mask(q_pos, k_pos, c.sliding_window)
            positions = jnp.broadcast_to(q_pos, tokens.shape)
        else:
            if positions is None:
                positions = jnp.broadcast_to(
                    jnp.arange(tokens.shape[1], dtype=jnp.int32), tokens.shape
                )
            cache_index = None
            mask = _training_mask(c, positions, segment_ids, causal_attention)
        x = self.embedder(tokens)
        x = nn.Dropout(c.dropout_rate, broadcast_dims=(-2,))(x, deterministic=deterministic)
        x = constrain(x, _ACT)
        x = repeat_layer(
            DecoderLayer,
            c.num_layers,
            scan=c.scan_layers,
            remat_policy=c.remat_policy,
            layer_kwargs=dict(config=c, deterministic=deterministic, decode=decode),
            x=x,
            args=(mask, positions, cache_index),
        )
        x = RMSNorm(
            c.layer_norm_epsilon,
            resolve_dtype(c.dtype),
            resolve_dtype(c.param_dtype),
            name="decoder_norm",
        )(x)
        if c.tie_embeddings:
            logits = self.embedder.attend(x)
        else:
            logits = DenseGeneral(
                c.vocab_size,
                ("embed", "vocab"),
                dtype=resolve_dtype(c.dtype),
                param_dtype=resolve_dtype(c.param_dtype),
                out_float32=True,
                name="logits_dense",
            )(x)
        return constrain(logits, ("batch", "length", "vocab"))


class DecoderOnly(nn.Module):
    """Decoder-only LM; `__call__` returns float32 logits [batch, length, vocab]."""

    config: DecoderConfig

    def setup(self):
        c = self.config
        self.token_embedder = Embed(
            c.vocab_size,
            c.emb_dim,
            resolve_dtype(c.dtype),
            resolve_dtype(c.param_dtype),
            embedding_init=nn.initializers.normal(stddev=0.02),
            name="token_embedder",
        )
        self.decoder = DecoderStack(c, self.token_embedder)

    def __call__(
        self,
        decoder_input_tokens: jax.Array,
        *,
        decoder_segment_ids=None,
        decoder_positions=None,
        decoder_causal_attention=None,
        deterministic: bool = True,
        decode: bool = False,
    ) -> jax.Array:
        return self.decoder(
            decoder_input_tokens,
            decoder_segment_ids,
            decoder_positions,
            decoder_causal_attention,
            deterministic,
            decode,
        )
