"""Device mesh, logical-axis rules, and shardings for state and batches.

The mesh always has the axes ``data``, ``fsdp`` and ``tensor`` (Auto axis types so
logical-rule constraints apply). Batches are split over ``data`` x ``fsdp``; parameters are
split over ``fsdp`` along ``embed`` (ZeRO-3 style) and over ``tensor`` along heads/mlp/vocab
(Megatron style). A dimension that a mesh axis does not divide is replicated over it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from t5x_rationale.architectures.axes import LogicalRules, resolve_spec

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Mesh shape; one axis may be -1 to take the remaining devices."""

    data: int = -1
    fsdp: int = 1
    tensor: int = 1

    def __post_init__(self):
        sizes = (self.data, self.fsdp, self.tensor)
        if sum(s == -1 for s in sizes) > 1:
            raise ValueError(
                f"at most one mesh axis may be -1, got data={self.data}, fsdp={self.fsdp}, "
                f"tensor={self.tensor}"
            )
        if any(s == 0 or s < -1 for s in sizes):
            raise ValueError(f"mesh axis sizes must be positive or -1, got {sizes}")

    def shape(self, num_devices: int) -> tuple[int, int, int]:
        """Resolves -1 and checks the product equals the device count."""
        sizes = [self.data, self.fsdp, self.tensor]
        known = math.prod(s for s in sizes if s != -1)
        if -1 in sizes:
            if num_devices % known:
                raise ValueError(
                    f"mesh (data={self.data}, fsdp={self.fsdp}, tensor={self.tensor}) "
                    f"cannot fill {num_devices} devices: {known} does not divide {num_devices}"
                )
            sizes[sizes.index(-1)] = num_devices // known
        if math.prod(sizes) != num_devices:
            raise ValueError(
                f"mesh data x fsdp x tensor = {sizes[0]}x{sizes[1]}x{sizes[2]} = "
                f"{math.prod(sizes)} devices, but {num_devices} devices are available"
            )
        return tuple(sizes)

    @classmethod
    def parse(cls, text: str) -> "MeshConfig":
        """Parses 'DATAxFSDPxTENSOR', e.g. '2x2x2' or '-1x1x1'."""
        parts = text.lower().replace(",", "x").split("x")
        if len(parts) != 3:
            raise ValueError(f"mesh {text!r} must be DATAxFSDPxTENSOR, e.g. 2x2x2")
        try:
            sizes = [int(p) for p in parts]
        except ValueError:
            raise ValueError(f"mesh {text!r} must be three integers DATAxFSDPxTENSOR") from None
        return cls(*sizes)


def create_mesh(config: MeshConfig, devices: Optional[Sequence[jax.Device]] = None) -> Mesh:
    """A (data, fsdp, tensor) mesh with Auto axis types over `devices` (default: all)."""
    devices = list(jax.devices() if devices is None else devices)
    shape = config.shape(len(devices))
    if len(devices) == jax.device_count():
        return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * 3, devices=devices)
    return Mesh(np.asarray(devices).reshape(shape), MESH_AXES, axis_types=(AxisType.Auto,) * 3)


def standard_logical_axis_rules() -> list[tuple[str, Any]]:
    """Logical name -> mesh axes, in priority order (see module docstring)."""
    return [
        ("batch", BATCH_AXES),
        ("vocab", "tensor"),
        ("mlp", "tensor"),
        ("heads", "tensor"),
        ("kv_heads", "tensor"),
        ("embed", "fsdp"),
        ("kv", None),
        ("length", None),
        ("layers", None),
        ("relpos_buckets", None),
    ]


class Partitioner:
    """Shardings derived from logical axis names on one mesh."""

    def __init__(self, mesh: Mesh, rules: Optional[LogicalRules] = None):
        self.mesh = mesh
        self.rules = list(standard_logical_axis_rules() if rules is None else rules)
        self.mesh_shape = dict(mesh.shape)

    @contextlib.contextmanager
    def context(self):
        """Mesh + logical rules, active whenever model code is traced or run on this mesh."""
        with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
            yield

    # ------------------------------------------------------------------ parameters

    def shardings_for(self, abstract_tree, logical_specs) -> tuple[Any, list[str]]:
        """NamedShardings for an (unboxed) abstract tree given logical specs.

        Returns:
          The sharding tree and notes on dimensions replicated for divisibility.
        """
        notes: list[str] = []

        def one(path, leaf, logical):
            # unannotated: replicate
            names = tuple(logical) if logical else (None,) * len(leaf.shape)
            try:
                spec, leaf_notes = resolve_spec(names, leaf.shape, self.rules, self.mesh_shape)
            except ValueError as e:
                raise ValueError(f"{jax.tree_util.keystr(path)}: {e}") from None
            notes.extend(f"{jax.tree_util.keystr(path)}: {n}" for n in leaf_notes)
            return NamedSharding(self.mesh, spec)

        shardings = jax.tree_util.tree_map_with_path(
            one,
            abstract_tree,
            logical_specs,
            is_leaf=lambda x: isinstance(x, PartitionSpec) or x is None,
        )
        return shardings, notes

    @property
    def replicated(self) -> NamedSharding:
        return NamedSharding(self.mesh, PartitionSpec())

    # --------------------------------------------------------------------- batches

    @property
    def batch_shards(self) -> int:
        return self.mesh_shape["data"] * self.mesh_shape["fsdp"]

    def batch_sharding(self, ndim: int) -> NamedSharding:
        return NamedSharding(self.mesh, PartitionSpec(BATCH_AXES, *([None] * (ndim - 1))))

    def check_global_batch_size(self, batch_size: int) -> None:
        if batch_size % self.batch_shards:
            raise ValueError(
                f"global batch size {batch_size} is not divisible by data x fsdp = "
                f"{self.mesh_shape['data']}x{self.mesh_shape['fsdp']} = {self.batch_shards}"
            )

    def host_rows(self, global_batch_size: int) -> slice:
        """The contiguous rows of a global batch that this process's devices hold."""
        self.check_global_batch_size(global_batch_size)
        indices = self.batch_sharding(1).addressable_devices_indices_map((global_batch_size,))
        starts = sorted({idx[0].start or 0 for idx in indices.values()})
        stops = sorted(
            {global_batch_size if idx[0].stop is None else idx[0].stop for idx in indices.values()}
        )
        rows = slice(starts[0], stops[-1])
        if (rows.stop - rows.start) * jax.process_count() != global_batch_size:
            raise ValueError(
                f"this process's devices hold rows {starts}..{stops} of a batch of "
                f"{global_batch_size}, which are not one contiguous block of "
                f"1/{jax.process_count()}"
            )
        return rows

    def host_batch_to_global(self, batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
        """Host-local NumPy batch (this process's rows) -> global sharded jax.Arrays."""
        out = {}
        for name, local in batch.items():
            local = np.asarray(local)
            global_shape = (local.shape[0] * jax.process_count(),) + local.shape[1:]
            self.check_global_batch_size(global_shape[0])
            out[name] = jax.make_array_from_process_local_data(
                self.batch_sharding(local.ndim), local, global_shape
            )
        return out

    def describe(self, abstract_tree, shardings, logical_specs) -> str:
        """One line per leaf: path, shape, dtype, logical axes, mesh sharding."""
        rows = []
        leaves = jax.tree_util.tree_flatten_with_path(abstract_tree)[0]
        flat_shard = jax.tree.leaves(shardings, is_leaf=lambda x: isinstance(x, NamedSharding))
        flat_logical = jax.tree.leaves(
            logical_specs, is_leaf=lambda x: isinstance(x, PartitionSpec) or x is None
        )
        total = 0
        for (path, leaf), sharding, logical in zip(leaves, flat_shard, flat_logical):
            total += math.prod(leaf.shape)
            rows.append(
                f"{jax.tree_util.keystr(path):80s} {str(tuple(leaf.shape)):20s} "
                f"{str(leaf.dtype):9s} "
                f"logical={tuple(logical) if logical is not None else ()} "
                f"mesh={tuple(sharding.spec)}"
            )
        rows.append(f"total parameters: {total:,}  mesh: {self.mesh_shape}")
        return "\n".join(rows)
