"""A scan whose state is an append-only buffer, differentiated in O(steps) memory.

Each step reads the slots earlier steps wrote and writes one new slot. Under `lax.scan`
the buffer is the carry, so reverse-mode saves one copy of the whole buffer per step
(O(steps^2) memory). Here the backward pass keeps only the final buffer: step k is
recomputed from it (step k must ignore slots >= k, which hold later steps' values) and
cotangents for the buffer accumulate in one array as the reverse scan walks back. This is
rematerialisation per step with the buffer stored once.

The recomputation need not redo everything: the backward hands step k a `Replay` with the
slot it wrote (read back from the final buffer, free) and whatever the step chose to record
in the forward pass (stored once per step). A step can then take values it knows instead of
recomputing them, differentiating through `replayed` (below); how much it records is its
trade of memory for recomputation.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

# step_fn(consts, statics, carry, buffer, x, replay) -> (new_carry, new_slot, y, record)
StepFn = Callable[[Any, Any, Any, Any, Any, Any], tuple[Any, Any, Any, Any]]


class Replay(NamedTuple):
    """What the backward pass gives a step it recomputes: its own slot and its record."""

    slot: Any  # the slot this step wrote in the forward pass
    record: Any  # the `record` this step returned in the forward pass


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def replayed(fn: Callable, args: tuple, value: Any) -> Any:
    """`value`, known to equal `fn(*args)`, differentiated as `fn` at `args`.

    The forward costs nothing; the backward is `fn`'s own pullback, for which XLA drops the
    unused forward value, so a linear map (a projection, RoPE) costs only its transpose.
    `value` itself gets a zero cotangent: it is a recorded constant, not an input.
    """
    del fn, args
    return value


def _replayed_fwd(fn, args, value):
    return value, args


def _replayed_bwd(fn, args, d_value):
    _, pullback = jax.vjp(fn, *args)
    return pullback(d_value), jax.tree.map(jnp.zeros_like, d_value)


replayed.defvjp(_replayed_fwd, _replayed_bwd)


def write_slot(buffer: Any, slot: Any, index: jax.Array, axis: int) -> Any:
    """`buffer` with `slot` written at `index` along `axis` (each leaf)."""
    return jax.tree.map(
        lambda b, s: jax.lax.dynamic_update_index_in_dim(b, s.astype(b.dtype), index, axis),
        buffer,
        slot,
    )


def read_slot(buffer: Any, index: jax.Array, axis: int) -> Any:
    return jax.tree.map(
        lambda b: jax.lax.dynamic_index_in_dim(b, index, axis, keepdims=False), buffer
    )


def append_scan(
    step_fn: StepFn,
    consts: Any,
    statics: Any,
    carry: Any,
    buffer: Any,
    xs: Any,
    *,
    index_fn: Callable[[Any], jax.Array],
    axis: int,
):
    """Runs `step_fn` over the leading axis of `xs`, appending one buffer slot per step.

    Args:
      step_fn: `(consts, statics, carry, buffer, x, replay) -> (carry, slot, y, record)`. It
        must read only buffer slots below `index_fn(x)` and its result must not depend on the
        others. `replay` is None in the forward pass and a `Replay` when the backward
        recomputes the step; `record` (any pytree, () for nothing) is kept for that replay.
      consts: differentiable inputs shared by every step (parameters, context activations).
      statics: non-differentiable inputs shared by every step (integer data, rng keys).
      carry: non-differentiable state passed step to step (sampled token ids).
      buffer: the initial buffer. Slots no step writes are inputs: steps may read them, and
        they are differentiated; the other slots are never read before being written.
      xs: per-step non-differentiable inputs; `index_fn(x)` is the slot step x writes.
      axis: the slot axis of every buffer leaf.

    Returns:
      (final carry, final buffer, stacked ys). Gradients flow to `consts` and to the initial
      buffer's unwritten slots (through ys and the buffer); the written slots' cotangents
      are propagated inside.
    """
    return _append_scan(step_fn, index_fn, axis, consts, statics, carry, buffer, xs)


def _forward(step_fn, index_fn, axis, consts, statics, carry, buffer, xs):
    def body(state, x):
        carry, buffer = state
        new_carry, slot, y, record = step_fn(consts, statics, carry, buffer, x, None)
        return (new_carry, write_slot(buffer, slot, index_fn(x), axis)), (y, carry, record)

    (carry, buffer), (ys, carries, records) = jax.lax.scan(body, (carry, buffer), xs)
    return (carry, buffer, ys), (carries, records)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def _append_scan(step_fn, index_fn, axis, consts, statics, carry, buffer, xs):
    return _forward(step_fn, index_fn, axis, consts, statics, carry, buffer, xs)[0]


def _fwd(step_fn, index_fn, axis, consts, statics, carry, buffer, xs):
    out, (carries, records) = _forward(step_fn, index_fn, axis, consts, statics, carry, buffer, xs)
    return out, (consts, statics, carries, records, out[1], xs)


def _bwd(step_fn, index_fn, axis, residuals, cotangents):
    consts, statics, carries, records, final_buffer, xs = residuals
    _, d_buffer_out, d_ys = cotangents  # custom_vjp hands in zeros, not symbolic zeros

    def body(acc, inputs):
        d_consts, d_buffer = acc
        carry, record, x, dy = inputs
        index = index_fn(x)
        replay = Replay(slot=read_slot(final_buffer, index, axis), record=record)

        def slot_and_y(c, b):
            _, slot, y, _ = step_fn(c, statics, carry, b, x, replay)
            return slot, y

        _, vjp = jax.vjp(slot_and_y, consts, final_buffer)
        dc, db = vjp((read_slot(d_buffer, index, axis), dy))
        d_consts = jax.tree.map(jnp.add, d_consts, dc)
        d_buffer = jax.tree.map(jnp.add, d_buffer, db)
        return (d_consts, d_buffer), None

    zeros = jax.tree.map(jnp.zeros_like, consts)
    (d_consts, d_buffer), _ = jax.lax.scan(
        body, (zeros, d_buffer_out), (carries, records, xs, d_ys), reverse=True
    )
    return d_consts, None, None, _unwritten(d_buffer, jax.vmap(index_fn)(xs), axis), None


def _unwritten(d_buffer: Any, written: jax.Array, axis: int) -> Any:
    """The initial buffer's cotangent: `d_buffer` with the slots in `written` zeroed (the
    steps overwrite those before anything reads them)."""

    def mask(d):
        keep = jnp.ones(d.shape[axis], bool).at[written].set(False)
        return jnp.where(keep.reshape([-1 if a == axis else 1 for a in range(d.ndim)]), d, 0)

    return jax.tree.map(mask, d_buffer)


_append_scan.defvjp(_fwd, _bwd)
