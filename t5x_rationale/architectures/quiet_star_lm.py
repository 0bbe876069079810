"""A decoder-only LM with Quiet-STaR's added parameters: thought embeddings and a mixing head.

Param tree: the `DecoderOnly` tree unchanged (`token_embedder`, `decoder`), so a plain LM
checkpoint's params drop in, plus
- `start_thought`, `end_thought` [embed]: stored divided by `thought_scale` and multiplied
  back on use (an effectively `thought_scale`-times larger learning rate), initialised from
  the mean embedding of `thought_init_ids` (the pieces of "---");
- `mixing_head/{hidden_0, hidden_1, out}`: MLP 2H -> H -> H -> 1 with ReLU, `out` bias-free
  and zero-initialised so the mixed prediction starts exactly at the base prediction.
`__call__` is the base LM, so evaluation, decoding and checkpoints work as for `DecoderOnly`.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from t5x_rationale.architectures.configs import DecoderConfig, resolve_dtype
from t5x_rationale.architectures.decoder import DecoderOnly


@dataclasses.dataclass(frozen=True)
class QuietStarConfig:
    """A decoder config plus the Quiet-STaR additions; other attributes read through."""

    decoder: DecoderConfig
    thought_init_ids: tuple = (6,)  # "---" in the shipped tokenizer
    thought_token_ids: tuple = (3, 4)  # "<thought>", "</thought>": never sampled or emitted
    thought_scale: float = 100.0
    mixing_sigmoid: bool = False  # the reference uses the head's output unbounded

    def __post_init__(self):
        if not isinstance(self.decoder, DecoderConfig):
            raise TypeError(
                "QuietStarConfig.decoder must be a DecoderConfig, got "
                f"{type(self.decoder).__name__}"
            )
        vocab = self.decoder.vocab_size
        bad = [i for i in self.thought_init_ids if not 0 <= i < vocab]
        if bad or not self.thought_init_ids:
            raise ValueError(
                f"QuietStarConfig.thought_init_ids {self.thought_init_ids} must be non-empty ids "
                f"below vocab_size {vocab}"
            )
        # In the vocabulary, or the two ids appended right after it (as the paper adds them
        # to an imported tokenizer: their embeddings are `start_thought` / `end_thought`).
        bad = [i for i in self.thought_token_ids if not 0 <= i < vocab + 2]
        if bad:
            raise ValueError(
                f"QuietStarConfig.thought_token_ids {self.thought_token_ids} must be ids below "
                f"vocab_size {vocab}, or the two appended after it ({vocab}, {vocab + 1})"
            )
        if self.thought_scale <= 0:
            raise ValueError(f"thought_scale must be positive, got {self.thought_scale}")
        if self.decoder.dropout_rate:
            raise ValueError(
                "Quiet-STaR runs without dropout (the reference has none); set dropout_rate = 0"
            )

    def __getattr__(self, name):  # fields of the decoder (num_layers, vocab_size, ...)
        if name == "decoder" or name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.decoder, name)

    @property
    def architecture(self) -> str:
        """The name "quiet_star": a decoder-only LM (batches, decoding) that also thinks."""
        return "quiet_star"


class MixingHead(nn.Module):
    """Scalar mixing weight per position from concat(h_base, h_thought): 2H -> H -> H -> 1
    with ReLU, as the reference builds it (hidden kernels N(0, 0.02) with zero biases; the
    output layer has no bias and starts at zero, so the mix starts at the base prediction)."""

    hidden: int
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, h_base: jax.Array, h_thought: jax.Array) -> jax.Array:
        x = jnp.concatenate([h_base, h_thought], axis=-1).astype(jnp.float32)
        x = jax.nn.relu(self._dense(x, "hidden_0", ("embed", "mlp"), self.hidden))
        x = jax.nn.relu(self._dense(x, "hidden_1", ("mlp", "embed"), self.hidden))
        return self._dense(x, "out", ("embed", None), 1, bias=False)[..., 0]

    def _dense(self, x, name: str, axes, features: int, bias: bool = True):
        init = nn.initializers.normal(stddev=0.02) if bias else nn.initializers.zeros
        kernel = self.param(
            f"{name}_kernel",
            nn.with_logical_partitioning(init, axes),
            (x.shape[-1], features),
            self.param_dtype,
        )
        y = x @ kernel.astype(jnp.float32)
        if not bias:
            return y
        b = self.param(
            f"{name}_bias",
            nn.with_logical_partitioning(nn.initializers.zeros, axes[1:]),
            (features,),
            self.param_dtype,
        )
        return y + b.astype(jnp.float32)


class QuietStarLM(DecoderOnly):
    """`DecoderOnly` plus thought embeddings and the mixing head (see the module docstring)."""

    config: QuietStarConfig

    def setup(self):
        c = self.config
        self.token_embedder, self.decoder = self.language_model(c.decoder)
        self.mixing_head = MixingHead(c.emb_dim, resolve_dtype(c.param_dtype))
        init = lambda rng: thought_init(self.token_embedder.embedding, c)  # noqa: E731
        self.start_thought = self.param(
            "start_thought", nn.with_logical_partitioning(init, ("embed",))
        )
        self.end_thought = self.param("end_thought", nn.with_logical_partitioning(init, ("embed",)))

    def __call__(self, decoder_input_tokens: jax.Array, **kwargs) -> jax.Array:
        """The base LM's logits (`DecoderOnly.__call__`'s keyword arguments)."""
        logits = super().__call__(decoder_input_tokens, **kwargs)
        if self.is_initializing():  # create the added params alongside the LM's
            h = jnp.zeros((1, self.config.emb_dim), jnp.float32)
            self.mixing_head(h, h)
            _ = self.start_thought, self.end_thought
        return logits


def thought_init(embedding: jax.Array, config: QuietStarConfig) -> jax.Array:
    """Stored start/end thought value: mean embedding of `thought_init_ids`, over the scale.

    Call this again on imported weights (a plain LM checkpoint) to re-derive both thoughts.
    """
    rows = jnp.take(jnp.asarray(embedding), jnp.asarray(config.thought_init_ids), axis=0)
    return (jnp.mean(rows.astype(jnp.float32), axis=0) / config.thought_scale).astype(
        embedding.dtype
    )
