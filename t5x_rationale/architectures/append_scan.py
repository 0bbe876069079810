"""A scan whose state is an append-only buffer, differentiated in O(steps) memory.

Each step reads the slots earlier steps wrote and writes one new slot. Under `lax.scan`
the buffer is the carry, so reverse-mode saves one copy of the whole buffer per step
(O(steps^2) memory). Here the backward pass keeps only the final buffer: step k is
recomputed from it (step k must ignore slots >= k, which hold later steps' values) and
cotangents for the buffer accumulate in one array as the reverse scan walks back. This is
rematerialisation per step with the buffer stored once.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp

# step_fn(consts, statics, carry, buffer, x) -> (new_carry, new_slot, y)
StepFn = Callable[[Any, Any, Any, Any, Any], tuple[Any, Any, Any]]


def write_slot(buffer: Any, slot: Any, index: jax.Array, axis: int) -> Any:
    """`buffer` with `slot` written at `index` along `axis` (each leaf)."""
    return jax.tree.map(
        lambda b, s: jax.lax.dynamic_update_index_in_dim(b, s.astype(b.dtype), index, axis), buffer, slot)


def read_slot(buffer: Any, index: jax.Array, axis: int) -> Any:
    return jax.tree.map(lambda b: jax.lax.dynamic_index_in_dim(b, index, axis, keepdims=False), buffer)


def append_scan(step_fn: StepFn, consts: Any, statics: Any, carry: Any, buffer: Any, xs: Any, *,
                index_fn: Callable[[Any], jax.Array], axis: int):
    """Runs `step_fn` over the leading axis of `xs`, appending one buffer slot per step.

    Args:
      step_fn: `(consts, statics, carry, buffer, x) -> (carry, slot, y)`. It must read only
        buffer slots below `index_fn(x)` and its result must not depend on the others.
      consts: differentiable inputs shared by every step (parameters, context activations).
      statics: non-differentiable inputs shared by every step (integer data, rng keys).
      carry: non-differentiable state passed step to step (sampled token ids).
      buffer: the initial buffer (its contents are never read before being written).
      xs: per-step non-differentiable inputs; `index_fn(x)` is the slot step x writes.
      axis: the slot axis of every buffer leaf.

    Returns:
      (final carry, final buffer, stacked ys). Gradients flow to `consts` only (through ys
      and the buffer); the buffer slots' cotangents are propagated inside.
    """
    return _append_scan(step_fn, index_fn, axis, consts, statics, carry, buffer, xs)


def _forward(step_fn, index_fn, axis, consts, statics, carry, buffer, xs):
    def body(state, x):
        carry, buffer = state
        new_carry, slot, y = step_fn(consts, statics, carry, buffer, x)
        return (new_carry, write_slot(buffer, slot, index_fn(x), axis)), (y, carry)

    (carry, buffer), (ys, carries) = jax.lax.scan(body, (carry, buffer), xs)
    return (carry, buffer, ys), carries


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def _append_scan(step_fn, index_fn, axis, consts, statics, carry, buffer, xs):
    return _forward(step_fn, index_fn, axis, consts, statics, carry, buffer, xs)[0]


def _fwd(step_fn, index_fn, axis, consts, statics, carry, buffer, xs):
    out, carries = _forward(step_fn, index_fn, axis, consts, statics, carry, buffer, xs)
    return out, (consts, statics, carries, out[1], xs)


def _bwd(step_fn, index_fn, axis, residuals, cotangents):
    consts, statics, carries, final_buffer, xs = residuals
    _, d_buffer_out, d_ys = cotangents  # custom_vjp hands in zeros, not symbolic zeros

    def body(acc, inputs):
        d_consts, d_buffer = acc
        carry, x, dy = inputs
        index = index_fn(x)

        def slot_and_y(c, b):
            _, slot, y = step_fn(c, statics, carry, b, x)
            return slot, y

        _, vjp = jax.vjp(slot_and_y, consts, final_buffer)
        dc, db = vjp((read_slot(d_buffer, index, axis), dy))
        d_consts = jax.tree.map(jnp.add, d_consts, dc)
        d_buffer = jax.tree.map(jnp.add, d_buffer, db)
        return (d_consts, d_buffer), None

    zeros = jax.tree.map(jnp.zeros_like, consts)
    (d_consts, _), _ = jax.lax.scan(body, (zeros, d_buffer_out), (carries, xs, d_ys), reverse=True)
    return d_consts, None, None, None, None


_append_scan.defvjp(_fwd, _bwd)
