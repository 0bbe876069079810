"""The `dense_mask` implementation of steps 1 .. F - 1: the reference construction (keys
concatenated per step under a mask with identity blocks), the executable reference."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from t5x_rationale.architectures import attention as attn
from t5x_rationale.architectures.stack import checkpointed
from t5x_rationale.quiet_star.functional_decoder import FunctionalDecoder
from t5x_rationale.quiet_star.spec import Context, ThinkingSpec
from t5x_rationale.quiet_star.steps import context_mask, repeat_copies, step_head, step_input

# ---------------------------------------------------------- dense-mask steps


def dense_step_mask(context: jax.Array, steps: int) -> jax.Array:
    """[N or 1, 1, T, T * (steps + 1)]: the context block, then one identity block per step."""
    t = context.shape[-1]
    eye = jnp.broadcast_to(jnp.eye(t, dtype=bool), context.shape[:2] + (t, t))
    return jnp.concatenate([context] + [eye] * steps, axis=-1)


def dense_layer_step(
    fd: FunctionalDecoder, p, x, earlier_keys: list, earlier_values: list, mask, k: int
):
    """One layer at dense step k: (x, this step's keys, values); attention over the context
    and every earlier step's keys (`earlier_keys`: k arrays [N, T, kv_heads, d]) and its own."""
    n, t = x.shape[:2]
    positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32) + k, (n, t))
    q, kk, vv = fd.qkv(p, x, positions)
    all_k = jnp.concatenate(list(earlier_keys) + [kk], axis=1)
    all_v = jnp.concatenate(list(earlier_values) + [vv], axis=1)
    out = attn.dot_product_attention(q, all_k, all_v, mask=mask)
    return fd.finish(p, x, out), kk, vv


def dense_step_head(
    fd: FunctionalDecoder, spec: ThinkingSpec, params, h_base, ctx: Context, k: int, x
):
    """The head of dense step k on the last layer's output: (sampled token, step outputs)."""
    return step_head(fd, spec, params, h_base, ctx, k, fd.final_norm(params, x))


def dense_mask_steps(
    fd: FunctionalDecoder,
    spec: ThinkingSpec,
    params,
    h_base,
    keys,
    values,
    ctx: Context,
    segment_ids,
    copies: int,
):
    """Steps 1 .. F - 1 for every row, as the reference runs them (one context row per group
    of `copies` rows comes in and is repeated)."""
    del segment_ids  # the steps' masks come from ctx, per row
    n, t = ctx.targets.shape
    h_base, keys, values = (
        jax.tree.map(lambda x: repeat_copies(x, copies), tree) for tree in (h_base, keys, values)
    )
    # the decoder's remat_policy per (step, layer) and per step head: what makes the
    # reference's T * (k + 1)-key scores fit at real lengths (none: store them all)
    remat_policy = fd.config.decoder.remat_policy
    layer_step = checkpointed(
        functools.partial(dense_layer_step, fd), remat_policy, static_argnums=(5,)
    )
    head = checkpointed(
        functools.partial(dense_step_head, fd, spec), remat_policy, static_argnums=(3,)
    )
    layers = fd.layer_params(params)
    # per layer: context, then each step
    step_keys = [[keys[layer]] for layer in range(len(layers))]
    step_values = [[values[layer]] for layer in range(len(layers))]
    sampled = jnp.zeros((n, t), jnp.int32)
    per_step = []
    for k in range(1, spec.num_steps + 1):
        mask = dense_step_mask(context_mask(fd.config, ctx.segment_ids, t, k), k)
        x = step_input(fd, spec, params, ctx, k, sampled)
        for layer, p in enumerate(layers):
            x, kk, vv = layer_step(p, x, step_keys[layer], step_values[layer], mask, k)
            step_keys[layer].append(kk)
            step_values[layer].append(vv)
        sampled, outputs = head(params, h_base, ctx, k, x)
        per_step.append(outputs)
    return jax.tree.map(lambda *xs: jnp.stack(xs), *per_step)
