"""Logical axis names to mesh axes: the one resolution rule shared by params and activations.

Rules are an ordered list of ``(logical_name, mesh_axes)`` pairs, T5X style. For each array
dimension the first rule whose mesh axes are not yet used by another dimension of the same
array wins. A dimension whose size is not divisible by the product of its mesh axes drops
mesh axes from the end until it is (in the limit it is replicated), because XLA requires
even shards; :func:`resolve_spec` reports such drops so callers can log them.
"""

from __future__ import annotations

import math
from typing import Mapping, Optional, Sequence

import flax.linen as nn
import jax
from jax.sharding import PartitionSpec

LogicalRules = Sequence[tuple[str, Optional[str | tuple[str, ...]]]]


def _as_tuple(mesh_axes) -> tuple[str, ...]:
    if mesh_axes is None:
        return ()
    return (mesh_axes,) if isinstance(mesh_axes, str) else tuple(mesh_axes)


def resolve_spec(
    logical_axes: Sequence[Optional[str]],
    shape: Sequence[int],
    rules: LogicalRules,
    mesh_shape: Mapping[str, int],
    *,
    strict: bool = True,
) -> tuple[PartitionSpec, list[str]]:
    """Resolves logical axis names of one array to a PartitionSpec.

    Args:
      logical_axes: one logical name (or None) per dimension.
      shape: the array shape, used for the divisibility check.
      rules: ordered (logical name, mesh axes) rules.
      mesh_shape: mesh axis name -> size.
      strict: raise when a logical name has no rule at all (used for parameters).

    Returns:
      The PartitionSpec and a list of human-readable notes about replicated dimensions.
    """
    if len(logical_axes) != len(shape):
        raise ValueError(f"logical axes {tuple(logical_axes)} do not match shape {tuple(shape)}")
    if strict:
        _check_rules_cover(logical_axes, rules)
    assigned: list[tuple[str, ...]] = [() for _ in logical_axes]
    done = [a is None for a in logical_axes]
    used: set[str] = set()
    for rule_name, rule_mesh in rules:
        mesh_axes = _as_tuple(rule_mesh)
        for dim, name in enumerate(logical_axes):
            if done[dim] or name != rule_name:
                continue
            if any(ax in used for ax in mesh_axes):
                continue
            unknown = [ax for ax in mesh_axes if ax not in mesh_shape]
            if unknown:
                raise ValueError(
                    f"rule {rule_name!r} -> {rule_mesh} names mesh axes {unknown} "
                    f"not in mesh {dict(mesh_shape)}"
                )
            assigned[dim], done[dim] = mesh_axes, True
            used.update(mesh_axes)
    notes = _drop_indivisible(assigned, logical_axes, shape, mesh_shape)
    entries = [None if not a else (a[0] if len(a) == 1 else a) for a in assigned]
    return PartitionSpec(*entries), notes


def _check_rules_cover(logical_axes: Sequence[Optional[str]], rules: LogicalRules) -> None:
    known = {name for name, _ in rules}
    missing = [a for a in logical_axes if a is not None and a not in known]
    if missing:
        raise ValueError(
            f"logical axis name(s) {missing} (of {tuple(logical_axes)}) have no partitioning "
            f"rule; rules cover {sorted(known)}"
        )


def _drop_indivisible(assigned, logical_axes, shape, mesh_shape) -> list[str]:
    """Drops mesh axes from the end of each dimension's `assigned` (in place) until the
    dimension divides evenly; returns a note per dimension that lost any."""
    notes = []
    for dim, mesh_axes in enumerate(assigned):
        kept = list(mesh_axes)
        while kept and shape[dim] % math.prod(mesh_shape[a] for a in kept):
            kept.pop()
        if len(kept) != len(mesh_axes):
            notes.append(
                f"dim {dim} ({logical_axes[dim]}, size {shape[dim]}) not divisible by "
                f"mesh axes {mesh_axes}: sharded over {tuple(kept) or 'nothing'}"
            )
        assigned[dim] = tuple(kept)
    return notes


def constrain(x: jax.Array, logical_axes: Sequence[Optional[str]]) -> jax.Array:
    """Sharding constraint on an activation from logical names; a no-op without rules or mesh.

    Rules come from ``flax.linen.logical_axis_rules`` and the mesh from ``jax.set_mesh``,
    both set by the trainer, so architectures never see a mesh.
    """
    rules = nn.get_logical_axis_rules()
    mesh = jax.sharding.get_abstract_mesh()
    if not rules or mesh.empty:
        return x
    spec, _ = resolve_spec(logical_axes, x.shape, rules, dict(mesh.shape), strict=False)
    return jax.lax.with_sharding_constraint(x, spec)
