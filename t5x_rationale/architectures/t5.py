"""T5 v1.1 / Flan-T5 encoder-decoder with T5X parameter names.

Param tree: token_embedder/embedding; encoder/{relpos_bias, layers_i/{pre_attention_layer_norm,
attention/{query,key,value,out}, pre_mlp_layer_norm, mlp/{wi_0,wi_1,wo}}, encoder_norm};
decoder/{relpos_bias, layers_i/{pre_self_attention_layer_norm, self_attention,
pre_cross_attention_layer_norm, encoder_decoder_attention, pre_mlp_layer_norm, mlp},
decoder_norm, logits_dense}. T5 attention has no 1/sqrt(d) logit scaling (it is folded
into the query initialisation).
"""

from __future__ import annotations

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from t5x_rationale.architectures import attention as attn
from t5x_rationale.architectures.axes import constrain
from t5x_rationale.architectures.configs import T5Config, resolve_dtype
from t5x_rationale.architectures.decode_cache import advance_decode_positions
from t5x_rationale.architectures.layers import DenseGeneral, Embed, GatedMlp, RMSNorm
from t5x_rationale.architectures.position import RelativePositionBias
from t5x_rationale.architectures.stack import embedded_stack

_ACT = ("batch", "length", "embed")


def _default_positions(tokens: jax.Array, positions: Optional[jax.Array]) -> jax.Array:
    """Explicit positions, or 0..L-1 shared by the batch (shape [1, L])."""
    if positions is not None:
        return positions
    return jnp.arange(tokens.shape[1], dtype=jnp.int32)[None]


def _relative_bias(
    c: T5Config,
    bidirectional: bool,
    length: int,
    query_positions: Optional[jax.Array],
    key_positions: Optional[jax.Array],
) -> jax.Array:
    """The stack's `relpos_bias`; positions None means 0..length-1, built from its diagonals."""
    module = RelativePositionBias(
        c.relative_attention_num_buckets,
        c.relative_attention_max_distance,
        c.num_heads,
        bidirectional=bidirectional,
        dtype=resolve_dtype(c.dtype),
        param_dtype=resolve_dtype(c.param_dtype),
        name="relpos_bias",
    )
    if query_positions is None:
        return module.for_length(length)
    return module(query_positions, key_positions)


class _T5Block(nn.Module):
    """Shared helpers of T5 layers: norms, attention and MLP built from the config."""

    config: T5Config
    deterministic: bool = True

    def norm(self, name):
        c = self.config
        return RMSNorm(
            c.layer_norm_epsilon, resolve_dtype(c.dtype), resolve_dtype(c.param_dtype), name=name
        )

    def attention(self, name):
        c = self.config
        return attn.MultiHeadAttention(
            num_heads=c.num_heads,
            num_kv_heads=c.num_heads,
            head_dim=c.head_dim,
            out_features=c.emb_dim,
            dtype=resolve_dtype(c.dtype),
            param_dtype=resolve_dtype(c.param_dtype),
            dropout_rate=c.dropout_rate,
            scale=1.0,
            implementation=c.attention_impl,
            query_init_scale=1.0 / c.head_dim,
            name=name,
        )

    def residual(self, x, h):
        h = nn.Dropout(self.config.dropout_rate, broadcast_dims=(-2,))(
            h, deterministic=self.deterministic
        )
        return constrain(x + h, _ACT)

    def mlp(self, x):
        c = self.config
        return GatedMlp(
            c.mlp_dim,
            c.mlp_activations,
            c.dropout_rate,
            resolve_dtype(c.dtype),
            resolve_dtype(c.param_dtype),
            name="mlp",
        )(x, deterministic=self.deterministic)


class T5EncoderLayer(_T5Block):
    @nn.compact
    def __call__(self, x, mask, bias):
        h = self.norm("pre_attention_layer_norm")(x)
        h = self.attention("attention")(
            h, h, mask=mask, bias=bias, deterministic=self.deterministic
        )
        x = self.residual(x, h)
        x = self.residual(x, self.mlp(self.norm("pre_mlp_layer_norm")(x)))
        return x, None


class T5DecoderLayer(_T5Block):
    decode: bool = False

    @nn.compact
    def __call__(self, x, encoded, self_mask, self_bias, cross_mask, cache_index):
        h = self.norm("pre_self_attention_layer_norm")(x)
        h = self.attention("self_attention")(
            h,
            h,
            mask=self_mask,
            bias=self_bias,
            decode=self.decode,
            cache_index=cache_index,
            deterministic=self.deterministic,
        )
        x = self.residual(x, h)
        h = self.norm("pre_cross_attention_layer_norm")(x)
        h = self.attention("encoder_decoder_attention")(
            h,
            encoded,
            mask=cross_mask,
            decode=self.decode,
            static_kv=True,
            deterministic=self.deterministic,
        )
        x = self.residual(x, h)
        x = self.residual(x, self.mlp(self.norm("pre_mlp_layer_norm")(x)))
        return x, None


class T5Encoder(nn.Module):
    config: T5Config
    embedder: Embed

    @nn.compact
    def __call__(self, tokens, segment_ids=None, positions=None, deterministic=True):
        c = self.config
        valid = tokens > 0 if segment_ids is None else segment_ids > 0
        mask = attn.combine_masks(
            attn.padding_mask(valid, valid),
            None if segment_ids is None else attn.segment_mask(segment_ids, segment_ids),
        )
        bias = _relative_bias(c, True, tokens.shape[1], positions, positions)
        x = embedded_stack(
            self.embedder,
            tokens,
            T5EncoderLayer,
            c.num_encoder_layers,
            c,
            deterministic=deterministic,
            args=(mask, bias),
        )
        x = RMSNorm(
            c.layer_norm_epsilon,
            resolve_dtype(c.dtype),
            resolve_dtype(c.param_dtype),
            name="encoder_norm",
        )(x)
        return nn.Dropout(c.dropout_rate, broadcast_dims=(-2,))(x, deterministic=deterministic)


class T5Decoder(nn.Module):
    config: T5Config
    embedder: Embed

    @nn.compact
    def __call__(
        self,
        encoded,
        encoder_valid,
        tokens,
        *,
        encoder_segment_ids=None,
        segment_ids=None,
        positions=None,
        deterministic=True,
        decode=False,
    ):
        c = self.config
        q_pos, k_pos, cache_index, self_mask = self._self_attention_mask(
            tokens, segment_ids, positions, decode
        )
        if encoder_segment_ids is not None and segment_ids is not None:
            cross_mask = attn.segment_mask(segment_ids, encoder_segment_ids)
        else:
            cross_mask = encoder_valid[:, None, None, :]
        explicit = decode or positions is not None
        self_bias = _relative_bias(
            c, False, tokens.shape[1], q_pos if explicit else None, k_pos if explicit else None
        )
        x = embedded_stack(
            self.embedder,
            tokens,
            T5DecoderLayer,
            c.num_decoder_layers,
            c,
            deterministic=deterministic,
            args=(encoded, self_mask, self_bias, cross_mask, cache_index),
            decode=decode,
        )
        x = RMSNorm(
            c.layer_norm_epsilon,
            resolve_dtype(c.dtype),
            resolve_dtype(c.param_dtype),
            name="decoder_norm",
        )(x)
        x = nn.Dropout(c.dropout_rate, broadcast_dims=(-2,))(x, deterministic=deterministic)
        if c.logits_via_embedding:
            logits = self.embedder.attend(x * c.emb_dim**-0.5)
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

    def _self_attention_mask(self, tokens, segment_ids, positions, decode):
        """(query positions, key positions, cache write index, causal self-attention mask);
        in decode mode the positions come from the cache."""
        if decode:
            q_pos, k_pos, cache_index = advance_decode_positions(self, tokens)
            return q_pos, k_pos, cache_index, attn.causal_mask(q_pos, k_pos)
        q_pos = k_pos = _default_positions(tokens, positions)
        mask = attn.combine_masks(
            attn.causal_mask(q_pos, k_pos),
            None if segment_ids is None else attn.segment_mask(segment_ids, segment_ids),
        )
        return q_pos, k_pos, None, mask


class EncoderDecoder(nn.Module):
    """T5 encoder-decoder; `__call__` is the teacher-forced forward returning float32 logits."""

    config: T5Config

    def setup(self):
        c = self.config
        self.token_embedder = Embed(
            c.vocab_size,
            c.emb_dim,
            resolve_dtype(c.dtype),
            resolve_dtype(c.param_dtype),
            name="token_embedder",
        )
        self.encoder = T5Encoder(c, self.token_embedder)
        self.decoder = T5Decoder(c, self.token_embedder)

    def encode(
        self,
        encoder_input_tokens,
        encoder_segment_ids=None,
        encoder_positions=None,
        deterministic=True,
    ):
        return self.encoder(
            encoder_input_tokens, encoder_segment_ids, encoder_positions, deterministic
        )

    def decode(
        self,
        encoded,
        encoder_input_tokens,
        decoder_input_tokens,
        *,
        encoder_segment_ids=None,
        decoder_segment_ids=None,
        decoder_positions=None,
        deterministic=True,
        decode=False,
    ):
        encoder_valid = (
            encoder_input_tokens > 0 if encoder_segment_ids is None else encoder_segment_ids > 0
        )
        return self.decoder(
            encoded,
            encoder_valid,
            decoder_input_tokens,
            encoder_segment_ids=encoder_segment_ids,
            segment_ids=decoder_segment_ids,
            positions=decoder_positions,
            deterministic=deterministic,
            decode=decode,
        )

    def __call__(
        self,
        encoder_input_tokens,
        decoder_input_tokens,
        *,
        encoder_segment_ids=None,
        decoder_segment_ids=None,
        encoder_positions=None,
        decoder_positions=None,
        deterministic=True,
        decode=False,
    ):
        encoded = self.encode(
            encoder_input_tokens, encoder_segment_ids, encoder_positions, deterministic
        )
        return self.decode(
            encoded,
            encoder_input_tokens,
            decoder_input_tokens,
            encoder_segment_ids=encoder_segment_ids,
            decoder_segment_ids=decoder_segment_ids,
            decoder_positions=decoder_positions,
            deterministic=deterministic,
            decode=decode,
        )
