"""The decoder's layers as functions of its param tree, for the thinking steps.

Each projection can be recorded in the forward pass and replayed in the backward (see
`append_scan.replayed`), which is what lets the streams steps recompute less."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from t5x_rationale.architectures.axes import constrain
from t5x_rationale.architectures.configs import resolve_dtype
from t5x_rationale.architectures.layers import DenseGeneral, RMSNorm
from t5x_rationale.architectures.position import apply_rope
from t5x_rationale.architectures.quiet_star_lm import MixingHead, QuietStarConfig
from t5x_rationale.quiet_star.append_scan import replayed

ACT = ("batch", "length", "embed")


class FunctionalDecoder:
    """The decoder's layers as functions of its param tree (same math as `DecoderOnly`)."""

    def __init__(self, config: QuietStarConfig):
        self.config = config
        c = config.decoder
        self.dtype, self.param_dtype = resolve_dtype(c.dtype), resolve_dtype(c.param_dtype)

    def _dense(self, features, axes, p, x, axis=-1, out_float32=False):
        module = DenseGeneral(
            features,
            axes,
            axis=axis,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            out_float32=out_float32,
        )
        return module.apply({"params": p}, x)

    def _norm(self, p, x):
        return RMSNorm(self.config.layer_norm_epsilon, self.dtype, self.param_dtype).apply(
            {"params": p}, x
        )

    def layer_params(self, params) -> list:
        dec = params["decoder"]
        if "layers" in dec:  # scanned layers: stacked along a leading axis
            return [
                jax.tree.map(lambda a, i=i: a[i], dec["layers"])
                for i in range(self.config.num_layers)
            ]
        return [dec[f"layers_{i}"] for i in range(self.config.num_layers)]

    def embed(self, params, tokens):
        table = constrain(params["token_embedder"]["embedding"], ("vocab", None))
        return jnp.take(table, tokens, axis=0).astype(self.dtype)

    def thought(self, params, name):
        return (params[name].astype(jnp.float32) * self.config.thought_scale).astype(self.dtype)

    def _linear(self, features, axes, axis=-1):
        """The projection `(inputs, kernel) -> output` of `_dense`, as `_project` takes it."""
        return lambda inputs, kernel: self._dense(
            features, axes, {"kernel": kernel}, inputs, axis=axis
        )

    @staticmethod
    def _project(name, fn, args, known, record):
        """`fn(*args)`, or the value `known[name]` differentiated as `fn`; kept in `record`."""
        value = replayed(fn, args, known[name]) if known and name in known else fn(*args)
        if record is not None:
            record[name] = value
        return value

    def qkv(self, p, x, positions, known=None, record=None):
        """Rotated queries, keys and values of one layer. `known` and `record` map the names
        query / key / value to projection outputs (see `_project`)."""
        c = self.config
        h = self._norm(p["pre_self_attention_layer_norm"], x)
        a = p["self_attention"]

        def projection(name, heads, axes, rope):
            linear = self._linear((heads, c.head_dim), ("embed", axes, "kv"))
            fn = (
                (lambda h, kernel: apply_rope(linear(h, kernel), positions, c.rope_theta))
                if rope
                else linear
            )
            y = self._project(name, fn, (h, a[name]["kernel"]), known, record)
            return constrain(y, ("batch", "length", axes, "kv"))

        return (
            projection("query", c.num_heads, "heads", True),
            projection("key", c.kv_heads, "kv_heads", True),
            projection("value", c.kv_heads, "kv_heads", False),
        )

    def finish(self, p, x, attention_out, known=None, record=None):
        """Output projection, residual, gated MLP, residual (the layer after attention)."""
        c, linear = self.config, self._linear
        out = self._project(
            "out",
            linear(c.emb_dim, ("heads", "kv", "embed"), axis=(-2, -1)),
            (attention_out, p["self_attention"]["out"]["kernel"]),
            known,
            record,
        )
        x = constrain(x + out, ACT)
        h = self._norm(p["pre_mlp_layer_norm"], x)
        mlp = p["mlp"]
        gate = self._project(
            "gate", linear(c.mlp_dim, ("embed", "mlp")), (h, mlp["wi_0"]["kernel"]), known, record
        )
        up = self._project(
            "up", linear(c.mlp_dim, ("embed", "mlp")), (h, mlp["wi_1"]["kernel"]), known, record
        )
        hidden = constrain(jax.nn.silu(gate) * up, ("batch", "length", "mlp"))
        down = self._project(
            "down",
            linear(c.emb_dim, ("mlp", "embed")),
            (hidden, mlp["wo"]["kernel"]),
            known,
            record,
        )
        return constrain(x + down, ACT)

    def final_norm(self, params, x):
        return self._norm(params["decoder"]["decoder_norm"], x)

    def lm_head(self, params, h):
        if self.config.tie_embeddings:
            table = params["token_embedder"]["embedding"].astype(self.dtype)
            logits = jnp.einsum(
                "...d,vd->...v", h.astype(self.dtype), table, preferred_element_type=jnp.float32
            )
        else:
            logits = self._dense(
                self.config.vocab_size,
                ("embed", "vocab"),
                params["decoder"]["logits_dense"],
                h,
                out_float32=True,
            )
        return constrain(logits, ("batch", "length", "vocab"))

    def mixing_weight(self, params, h_base, h_thought):
        w = MixingHead(self.config.emb_dim, self.param_dtype).apply(
            {"params": params["mixing_head"]}, h_base, h_thought
        )
        return jax.nn.sigmoid(w) if self.config.mixing_sigmoid else w
