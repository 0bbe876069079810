"""Repeating a layer: unrolled or `nn.scan` over layers, with a rematerialisation policy.

A layer module's `__call__(x, *args)` returns `(x, None)` so the same class works in both
modes; `deterministic` and `decode` are module attributes so remat/scan see only arrays.
Unrolled params are named `layers_{i}` (T5X naming); scanned params live under `layers`
with a leading `layers` logical axis.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax

from t5x_rationale.architectures.axes import constrain

_POLICIES = {
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def checkpointed(fn, remat_policy: str, static_argnums: tuple[int, ...] = ()):
    """`fn` rematerialised under the named policy (`fn` itself for "none"), for functional
    code outside Flax modules (the Quiet-STaR thinking steps)."""
    if remat_policy == "none":
        return fn
    return jax.checkpoint(fn, policy=_POLICIES[remat_policy], static_argnums=static_argnums)


def repeat_layer(
    layer_cls: type[nn.Module],
    num_layers: int,
    *,
    scan: bool,
    remat_policy: str,
    layer_kwargs: dict[str, Any],
    x: jax.Array,
    args: Sequence[Any],
) -> jax.Array:
    """Applies `num_layers` copies of `layer_cls` to `x`; call inside a compact method."""
    cls = layer_cls
    if remat_policy != "none":
        cls = nn.remat(cls, policy=_POLICIES[remat_policy], prevent_cse=not scan)
    if scan:
        scanned = nn.scan(
            cls,
            variable_axes={"params": 0, "cache": 0},
            split_rngs={"params": True, "dropout": True},
            in_axes=(nn.broadcast,) * len(args),
            length=num_layers,
            metadata_params={nn.PARTITION_NAME: "layers"},
        )
        x, _ = scanned(**layer_kwargs, name="layers")(x, *args)
        return x
    for i in range(num_layers):
        x, _ = cls(**layer_kwargs, name=f"layers_{i}")(x, *args)
    return x


def embedded_stack(
    embedder: nn.Module,
    tokens: jax.Array,
    layer_cls: type[nn.Module],
    num_layers: int,
    config: Any,
    *,
    deterministic: bool,
    args: Sequence[Any],
    **layer_kwargs,
) -> jax.Array:
    """Token embeddings with dropout, then `num_layers` copies of `layer_cls(config=config,
    deterministic=..., **layer_kwargs)`, scanned and rematerialised as `config` says (its
    `dropout_rate`, `scan_layers`, `remat_policy`); call inside a compact method."""
    x = embedder(tokens)
    x = nn.Dropout(config.dropout_rate, broadcast_dims=(-2,))(x, deterministic=deterministic)
    x = constrain(x, ("batch", "length", "embed"))
    layer_kwargs = dict(config=config, deterministic=deterministic, **layer_kwargs)
    return repeat_layer(
        layer_cls,
        num_layers,
        scan=config.scan_layers,
        remat_policy=config.remat_policy,
        layer_kwargs=layer_kwargs,
        x=x,
        args=args,
    )
