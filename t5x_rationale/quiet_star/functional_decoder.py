"""The decoder's pieces as functions of its param tree, for the thinking steps.

Every piece runs the Linen definition (`QuietStarLM`, `DecoderLayer`) on the given params.
Each projection can be recorded in the forward pass and replayed in the backward (see
`append_scan.replayed`), which is what lets the streams steps recompute less."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from t5x_rationale.architectures.configs import resolve_dtype
from t5x_rationale.architectures.decoder import DecoderLayer
from t5x_rationale.architectures.layers import DenseGeneral
from t5x_rationale.architectures.quiet_star_lm import QuietStarConfig, QuietStarLM
from t5x_rationale.quiet_star.append_scan import replayed

ACT = ("batch", "length", "embed")

# A layer's projections (DenseGeneral modules, by name) and the names their outputs are
# recorded and replayed under; query and key outputs are the rotated values.
_PROJECTIONS = {
    "query": "query",
    "key": "key",
    "value": "value",
    "out": "out",
    "wi_0": "gate",
    "wi_1": "up",
    "wo": "down",
}


class FunctionalDecoder:
    """The decoder's pieces as functions of its param tree (the math of `QuietStarLM`)."""

    def __init__(self, config: QuietStarConfig):
        self.config = config
        self.model = QuietStarLM(config)
        self.layer = DecoderLayer(config.decoder)
        self.dtype = resolve_dtype(config.dtype)

    def _apply(self, params, method, *args):
        """`method(model, *args)` with the model bound to `params`."""
        return self.model.apply({"params": params}, *args, method=method)

    def layer_params(self, params) -> list:
        dec = params["decoder"]
        if "layers" in dec:  # scanned layers: stacked along a leading axis
            return [
                jax.tree.map(lambda a, i=i: a[i], dec["layers"])
                for i in range(self.config.num_layers)
            ]
        return [dec[f"layers_{i}"] for i in range(self.config.num_layers)]

    def embed(self, params, tokens):
        return self._apply(params, lambda m, tokens: m.token_embedder(tokens), tokens)

    def thought(self, params, name):
        return (params[name].astype(jnp.float32) * self.config.thought_scale).astype(self.dtype)

    @staticmethod
    def _project(name, fn, args, known, record):
        """`fn(*args)`, or the value `known[name]` differentiated as `fn`; kept in `record`."""
        value = replayed(fn, args, known[name]) if known and name in known else fn(*args)
        if record is not None:
            record[name] = value
        return value

    def _layer_method(self, method, p, args, known, record):
        """`DecoderLayer.method(*args)` on one layer's params, each projection through
        `_project`."""
        with nn.intercept_methods(_projections(known, record)):
            return self.layer.apply({"params": p}, *args, method=method)

    def qkv(self, p, x, positions, known=None, record=None):
        """Rotated queries, keys and values of one layer. `known` and `record` map the names
        query / key / value to projection outputs (see `_project`)."""
        return self._layer_method(DecoderLayer.attention_inputs, p, (x, positions), known, record)

    def finish(self, p, x, attention_out, known=None, record=None):
        """Output projection, residual, gated MLP, residual (the layer after attention);
        `known` and `record` as in `qkv`, for out / gate / up / down."""
        return self._layer_method(DecoderLayer.finish, p, (x, attention_out), known, record)

    def final_norm(self, params, x):
        return self._apply(params, lambda m, x: m.decoder.decoder_norm(x), x)

    def lm_head(self, params, h):
        return self._apply(params, lambda m, h: m.decoder.logits(h), h)

    def mixing_weight(self, params, h_base, h_thought):
        w = self._apply(params, lambda m, a, b: m.mixing_head(a, b), h_base, h_thought)
        return jax.nn.sigmoid(w) if self.config.mixing_sigmoid else w


def _projections(known, record):
    """A method interceptor sending each `DenseGeneral.project` of a layer through
    `FunctionalDecoder._project`, with the layer's input, kernel and bias (None without one)
    as the arguments, so that a replayed projection differentiates all three."""

    def intercept(next_fun, args, kwargs, context):
        if not (isinstance(context.module, DenseGeneral) and context.method_name == "project"):
            return next_fun(*args, **kwargs)
        x, kernel, bias, *rest = args  # DenseGeneral passes all of them positionally
        project = context.orig_method  # the unintercepted method, bound to the module

        def fn(x, kernel, bias):
            return project(x, kernel, bias, *rest, **kwargs)

        name = _PROJECTIONS[context.module.name]
        return FunctionalDecoder._project(name, fn, (x, kernel, bias), known, record)

    return intercept
