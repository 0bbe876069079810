"""Decoder-only LM in the Llama/Mistral family: RoPE, RMSNorm, SwiGLU, grouped-query attention.

Param tree: token_embedder/embedding; decoder/{layers_i/{pre_self_attention_layer_norm,
self_attention/{query,key,value,out}, pre_mlp_layer_norm, mlp/{wi_0 (gate), wi_1 (up),
wo (down)}}, decoder_norm, logits_dense}. With `attention_bias`, query, key and value hold a
`bias` beside their `kernel`.
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
from t5x_rationale.architectures.stack import embedded_stack

_ACT = ("batch", "length", "embed")


class DecoderLayer(nn.Module):
    """Pre-norm layer: self-attention, then a gated SiLU MLP, each added to the residual.

    `__call__` is `attention_inputs`, the attention, then `finish`; Quiet-STaR's thinking
    steps call the two halves around an attention of their own.
    """

    config: DecoderConfig
    deterministic: bool = True
    decode: bool = False

    def setup(self):
        c = self.config
        dtype, param_dtype = resolve_dtype(c.dtype), resolve_dtype(c.param_dtype)
        self.pre_self_attention_layer_norm = RMSNorm(c.layer_norm_epsilon, dtype, param_dtype)
        self.self_attention = attn.MultiHeadAttention(
            num_heads=c.num_heads,
            num_kv_heads=c.kv_heads,
            head_dim=c.head_dim,
            out_features=c.emb_dim,
            dtype=dtype,
            param_dtype=param_dtype,
            dropout_rate=c.dropout_rate,
            rope_theta=c.rope_theta,
            rope_scaling=c.rope_scaling,
            qkv_bias=c.attention_bias,
            implementation=c.attention_impl,
        )
        self.pre_mlp_layer_norm = RMSNorm(c.layer_norm_epsilon, dtype, param_dtype)
        self.mlp = GatedMlp(c.mlp_dim, ("silu", "linear"), c.dropout_rate, dtype, param_dtype)
        self.dropout = nn.Dropout(c.dropout_rate, broadcast_dims=(-2,))

    def __call__(self, x, mask, positions, cache_index):
        query, key, value = self.attention_inputs(x, positions)
        out = self.self_attention.attend(
            query,
            key,
            value,
            mask=mask,
            bias=None,
            decode=self.decode,
            cache_index=cache_index,
            deterministic=self.deterministic,
        )
        return self.finish(x, out), None

    def attention_inputs(self, x, positions):
        """Queries, keys and values of the normed input, rotated at `positions`."""
        h = self.pre_self_attention_layer_norm(x)
        return self.self_attention.qkv(h, h, positions, positions)

    def finish(self, x, attention_out):
        """The layer after its attention: out projection, residual, MLP, residual."""
        x = self._residual(x, self.self_attention.out(attention_out))
        h = self.mlp(self.pre_mlp_layer_norm(x), deterministic=self.deterministic)
        return self._residual(x, h)

    def _residual(self, x, h):
        return constrain(x + self.dropout(h, deterministic=self.deterministic), _ACT)


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


def _check_decode_inputs(segment_ids, positions, causal_attention):
    named = (
        ("segment_ids", segment_ids),
        ("positions", positions),
        ("causal_attention", causal_attention),
    )
    given = [n for n, v in named if v is not None]
    if given:  # the cache holds one unpacked, causal sequence per row
        raise ValueError(
            f"decode=True does not support {given}; prefill packed or prefix-LM "
            "prompts without the cache"
        )


class DecoderStack(nn.Module):
    """Embedding, the layers, the final norm and the logits (`embedder` is shared: tied
    logits use its table)."""

    config: DecoderConfig
    embedder: Embed

    def setup(self):
        c = self.config
        dtype, param_dtype = resolve_dtype(c.dtype), resolve_dtype(c.param_dtype)
        self.decoder_norm = RMSNorm(c.layer_norm_epsilon, dtype, param_dtype)
        if not c.tie_embeddings:
            self.logits_dense = DenseGeneral(
                c.vocab_size,
                ("embed", "vocab"),
                dtype=dtype,
                param_dtype=param_dtype,
                out_float32=True,
            )

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
            _check_decode_inputs(segment_ids, positions, causal_attention)
            positions, mask, cache_index = self._decode_positions(tokens)
        else:
            if positions is None:
                positions = jnp.broadcast_to(
                    jnp.arange(tokens.shape[1], dtype=jnp.int32), tokens.shape
                )
            mask = _training_mask(c, positions, segment_ids, causal_attention)
            cache_index = None
        x = embedded_stack(
            self.embedder,
            tokens,
            DecoderLayer,
            c.num_layers,
            c,
            deterministic=deterministic,
            args=(mask, positions, cache_index),
            decode=decode,
        )
        return self.logits(self.decoder_norm(x))

    def _decode_positions(self, tokens):
        """(positions, mask over the cache, write index) of this decode call."""
        q_pos, k_pos, cache_index = advance_decode_positions(self, tokens)
        mask = attn.causal_mask(q_pos, k_pos)
        if self.config.sliding_window is not None:
            mask = mask & attn.sliding_window_mask(q_pos, k_pos, self.config.sliding_window)
        return jnp.broadcast_to(q_pos, tokens.shape), mask, cache_index

    def logits(self, h):
        """Float32 logits [batch, length, vocab] of final-normed hidden states."""
        if self.config.tie_embeddings:
            logits = self.embedder.attend(h)
        else:
            logits = self.logits_dense(h)
        return constrain(logits, ("batch", "length", "vocab"))


class DecoderOnly(nn.Module):
    """Decoder-only LM; `__call__` returns float32 logits [batch, length, vocab]."""

    config: DecoderConfig

    def setup(self):
        self.token_embedder, self.decoder = self.language_model(self.config)

    @staticmethod
    def language_model(c: DecoderConfig) -> tuple[Embed, DecoderStack]:
        """The token embedder and the stack (call from `setup`; subclasses add to them)."""
        embedder = Embed(
            c.vocab_size,
            c.emb_dim,
            resolve_dtype(c.dtype),
            resolve_dtype(c.param_dtype),
            embedding_init=nn.initializers.normal(stddev=0.02),
            name="token_embedder",
        )
        return embedder, DecoderStack(c, embedder, name="decoder")

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
