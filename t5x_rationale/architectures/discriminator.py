"""QCRD's rationale discriminator D(x, r) -> [0, 1]: a small T5 encoder over question and
candidate rationale, max-pooled over the valid tokens, then two linear layers and a sigmoid.

D has its own parameters (its own embedding table too), named as a T5X encoder so that the
project's T5 stack, sharding rules and checkpoint code apply unchanged:
`token_embedder/embedding`, `encoder/...` (as in `EncoderDecoder`), `pool_hidden/{kernel,
bias}` (embed -> mlp, ReLU) and `score/{kernel, bias}` (mlp -> 1).

Input layout: the question `[B, Lq]` and the candidates `[B, K, Lc]`, each left-justified with
trailing padding (id 0), as `CandidatesConverter` writes them. Each (question, candidate) pair
is one encoder row `[B * K, Lq + Lc]`: the question's valid tokens take positions
0..nq-1 and the candidate's nq..nq+nc-1 (explicit positions for T5's relative bias), and
padding gets segment id 0, so it is masked out of attention and out of the pool. The score is
therefore independent of how much padding follows either part.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from t5x_rationale.architectures.configs import T5Config, resolve_dtype
from t5x_rationale.architectures.layers import DenseGeneral, Embed
from t5x_rationale.architectures.t5 import T5Encoder


def pair_rows(
    question_tokens: jax.Array, candidate_tokens: jax.Array, candidate_weights=None
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(tokens, segment_ids, positions), each `[B * K, Lq + Lc]`: question then candidate.

    Valid tokens get segment id 1 and positions that continue from the question's last
    valid token into the candidate; padding gets segment id 0 (masked). The question is valid
    up to its last non-zero token (its EOS); a candidate's valid tokens are those with
    `candidate_weights` [B, K, Lc] > 0, or without them its non-zero ones. Where id 0 is a
    text token (byte-level BPE), pass the weights.
    """
    batch, num, cand_len = candidate_tokens.shape
    q = jnp.repeat(question_tokens.astype(jnp.int32), num, axis=0)  # [B*K, Lq]
    c = candidate_tokens.reshape(batch * num, cand_len).astype(jnp.int32)
    q_pos = jnp.broadcast_to(jnp.arange(q.shape[1], dtype=jnp.int32)[None], q.shape)
    q_len = jnp.max(jnp.where(q != 0, q_pos + 1, 0), axis=1, keepdims=True)
    c_valid = c > 0 if candidate_weights is None else candidate_weights.reshape(c.shape) > 0
    c_pos = q_len + jnp.arange(cand_len, dtype=jnp.int32)[None]
    tokens = jnp.concatenate([q, c], axis=1)
    segment_ids = jnp.concatenate([q_pos < q_len, c_valid], axis=1).astype(jnp.int32)
    positions = jnp.concatenate([q_pos, c_pos], axis=1) * segment_ids
    return tokens, segment_ids, positions


def masked_max_pool(hidden: jax.Array, valid: jax.Array) -> jax.Array:
    """Max over the length axis of `hidden` [N, L, D] at `valid` [N, L] positions only; a row
    without valid positions pools to zeros."""
    lowest = jnp.finfo(hidden.dtype).min
    pooled = jnp.max(jnp.where(valid[..., None], hidden, lowest), axis=1)
    return jnp.where(jnp.any(valid, axis=1)[:, None], pooled, jnp.zeros_like(pooled))


class Discriminator(nn.Module):
    """D(x, r): `__call__(question_tokens [B, Lq], candidate_tokens [B, K, Lc],
    candidate_weights [B, K, Lc] or None)` -> `[B, K]` scores in [0, 1] (`logits=True`: the
    pre-sigmoid logits, for a stable BCE); see `pair_rows` for which tokens count.

    Attributes:
      config: the encoder's shape (`encoder`-side fields of a T5Config; vocab_size must cover
        the token ids). The decoder fields are unused.
      hidden_dim: width of the first linear layer after the pool.
    """

    config: T5Config
    hidden_dim: int = 256

    @nn.compact
    def __call__(
        self,
        question_tokens: jax.Array,
        candidate_tokens: jax.Array,
        candidate_weights=None,
        *,
        deterministic: bool = True,
        logits: bool = False,
    ) -> jax.Array:
        c = self.config
        if not isinstance(c, T5Config):
            raise TypeError(f"Discriminator needs a T5Config, got {type(c).__name__}")
        if candidate_tokens.ndim != 3 or question_tokens.ndim != 2:
            raise ValueError(
                "Discriminator takes question_tokens [B, Lq] and candidate_tokens [B, K, Lc], "
                f"got {question_tokens.shape} and {candidate_tokens.shape}"
            )
        batch, num, _ = candidate_tokens.shape
        tokens, segment_ids, positions = pair_rows(
            question_tokens, candidate_tokens, candidate_weights
        )
        dtype, param_dtype = resolve_dtype(c.dtype), resolve_dtype(c.param_dtype)
        embedder = Embed(c.vocab_size, c.emb_dim, dtype, param_dtype, name="token_embedder")
        hidden = T5Encoder(c, embedder, name="encoder")(
            tokens, segment_ids, positions, deterministic
        )
        pooled = masked_max_pool(hidden.astype(jnp.float32), segment_ids > 0)
        dense = dict(dtype=jnp.float32, param_dtype=param_dtype, use_bias=True)
        x = DenseGeneral(self.hidden_dim, ("embed", "mlp"), name="pool_hidden", **dense)(pooled)
        x = jax.nn.relu(x)
        z = DenseGeneral(1, ("mlp", None), name="score", **dense)(x)[:, 0]
        z = z.reshape(batch, num)
        return z if logits else jax.nn.sigmoid(z)
