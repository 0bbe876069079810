"""The `streams` implementation of steps 1 .. F - 1: stream attention over the context and a
stream's own slots, the steps run as an `append_scan` that records and replays."""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from t5x_rationale.quiet_star.append_scan import Replay, append_scan, read_slot, write_slot
from t5x_rationale.quiet_star.functional_decoder import FunctionalDecoder
from t5x_rationale.quiet_star.spec import Context, ThinkingSpec
from t5x_rationale.quiet_star.steps import context_mask, repeat_copies, step_head, step_input
from t5x_rationale.quiet_star.stream_attention import replayed_stream_attention, stream_attention

# ------------------------------------------------------------- streams steps


def _stream_layers(
    fd: FunctionalDecoder,
    spec: ThinkingSpec,
    params,
    keys,
    values,
    x,
    slot_buffer,
    k,
    mask,
    replay: Optional[Replay] = None,
):
    """Every layer at stream step k: (last hidden, this step's keys, values, what each layer
    records for the backward: `spec.record`, nothing when replaying)."""
    n, t = x.shape[:2]
    positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32) + k, (n, t))
    slot_keys, slot_values = slot_buffer
    new_keys, new_values, records = [], [], []
    for layer, p in enumerate(fd.layer_params(params)):
        known = None if replay is None else _known(replay, layer)
        record = {}
        q, kk, vv = fd.qkv(p, x, positions, known, record)
        inputs = (
            q,
            keys[layer],
            values[layer],
            slot_keys[layer],
            slot_values[layer],
            kk,
            vv,
            k - 1,
            mask,
        )
        if known and "attention" in known:
            out = replayed_stream_attention(*inputs, *known["attention"])
        else:
            out, lse = stream_attention(*inputs)
            record["attention"] = (out, lse)
        x = fd.finish(p, x, out, known, record)
        new_keys.append(kk)
        new_values.append(vv)
        if replay is None:
            records.append({name: record[name] for name in spec.record})
    return x, tuple(new_keys), tuple(new_values), records


def _first_step(
    fd: FunctionalDecoder,
    spec: ThinkingSpec,
    params,
    keys,
    values,
    ctx: Context,
    segment_ids,
    copies: int,
):
    """Step 1, the start thought, once per group of `copies` identical rows: its streams see
    only the context, so the copies' layers and logits are equal; only the sampled token
    differs. Returns (next token [N, T], outputs [1, N, T], this step's keys and values per
    layer [N/copies, T, kv_heads, d]).

    It runs as a one-step `append_scan` over a one-slot buffer, so it records and replays
    what the later steps do, and its recomputation cannot be scheduled before the later
    steps' backward (it needs their cotangent of its keys and values).
    """
    n, t = keys[0].shape[:2]
    # no stream token yet
    no_slots = jnp.zeros(keys[0].shape[:3] + (0,) + keys[0].shape[3:], keys[0].dtype)
    empty = (tuple(no_slots for _ in keys), tuple(no_slots for _ in values))

    def step(consts, statics, sampled, buffer, k, replay: Optional[Replay]):
        del sampled, buffer, k  # step 1 reads no slot and no sampled token
        params, keys, values = consts
        ctx, segment_ids = statics
        x = jnp.broadcast_to(fd.thought(params, "start_thought"), (n, t, fd.config.emb_dim))
        mask = context_mask(fd.config, segment_ids, t, 1)
        x, new_keys, new_values, records = _stream_layers(
            fd, spec, params, keys, values, x, empty, 1, mask, replay
        )
        token, outputs = step_head(fd, spec, params, None, ctx, 1, fd.final_norm(params, x), copies)
        return token, (new_keys, new_values), outputs, records

    one_slot = jnp.zeros(keys[0].shape[:3] + (1,) + keys[0].shape[3:], keys[0].dtype)
    buffer = (tuple(one_slot for _ in keys), tuple(one_slot for _ in values))
    token, slots, outputs = append_scan(
        step,
        (params, tuple(keys), tuple(values)),
        (ctx, segment_ids),
        jnp.zeros(ctx.targets.shape, jnp.int32),
        buffer,
        jnp.ones((1,), jnp.int32),
        index_fn=lambda k: k - 1,
        axis=3,
    )
    first_keys, first_values = read_slot(slots, 0, axis=3)
    return token, outputs, first_keys, first_values


def streams_steps(
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
    """Steps 1 .. F - 1; h_base, keys and values have one row per group of `copies` rows."""
    n, t = ctx.targets.shape
    _, _, kv_heads, d = keys[0].shape
    sampled, first, first_keys, first_values = _first_step(
        fd, spec, params, keys, values, ctx, segment_ids, copies
    )
    h_base, keys, values = (
        jax.tree.map(lambda x: repeat_copies(x, copies), tree) for tree in (h_base, keys, values)
    )

    def step(consts, statics, sampled, buffer, k, replay: Optional[Replay]):
        params, h_base, keys, values = consts
        mask = context_mask(fd.config, statics.segment_ids, t, k)
        x = step_input(fd, spec, params, statics, k, sampled)
        x, new_keys, new_values, records = _stream_layers(
            fd, spec, params, keys, values, x, buffer, k, mask, replay
        )
        next_token, outputs = step_head(
            fd, spec, params, h_base, statics, k, fd.final_norm(params, x)
        )
        return next_token, (new_keys, new_values), outputs, records

    # one [N, T, kv_heads, slots, d] array per layer: a layer's slots are read without a copy;
    # slot 0 holds step 1's keys and values, an input of the scan over steps 2 .. F - 1
    slots = jnp.zeros((n, t, kv_heads, spec.num_steps, d), keys[0].dtype)
    buffer = tuple(
        tuple(write_slot(slots, repeat_copies(x, copies), 0, axis=3) for x in first_kv)
        for first_kv in (first_keys, first_values)
    )
    steps = jnp.arange(2, spec.num_steps + 1, dtype=jnp.int32)
    _, _, outputs = append_scan(
        step,
        (params, h_base, keys, values),
        ctx,
        sampled,
        buffer,
        steps,
        index_fn=lambda k: k - 1,
        axis=3,
    )
    return jax.tree.map(lambda a, b: jnp.concatenate([a, b]), first, outputs)


def _known(replay: Replay, layer: int) -> dict:
    """One layer's values a recomputed step takes instead of recomputing: its key and value
    (the slot it wrote) and what it recorded (projection outputs; the attention's output
    and log-normaliser)."""
    slot_keys, slot_values = replay.slot
    return {"key": slot_keys[layer], "value": slot_values[layer], **replay.record[layer]}
