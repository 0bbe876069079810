"""Hugging Face safetensors -> our params, laid out on the mesh as they are read.

Every param is built with `jax.make_array_from_callback`: for each device's shard, the
callback reads that slice of the HF tensor (through `Layout`, a slice of ours is a slice
of theirs) from a memory-mapped file. So each host reads only what its devices hold, one
tensor at a time, and host memory stays near the largest shard, not the model.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import jax
import numpy as np

from t5x_rationale.interop.hf_names import IGNORED_SUFFIXES, TIED_COPIES, Layout, mappings
from t5x_rationale.interop.safetensors_io import SafetensorsCheckpoint


class HfCheckpointMismatchError(ValueError):
    """The HF checkpoint's tensors do not match the model config (named with the tensor)."""


def import_params(checkpoint: SafetensorsCheckpoint, config, abstract_params: Any) -> Any:
    """Our params for `config` from `checkpoint`, on the shardings of `abstract_params`.

    Every param must have its tensor with the expected shape, and every tensor of the
    checkpoint must be used (apart from known copies and caches): a missing, extra or
    misshapen tensor is an `HfCheckpointMismatchError` naming it and its file.
    """
    table = mappings(config)
    _check_coverage(checkpoint, [m.hf_name for m in table], config)
    params = {}
    for m in table:
        target = _leaf(abstract_params, m.path)
        _check_shape(checkpoint, m.hf_name, m.layout, target.shape)
        value = jax.make_array_from_callback(
            target.shape,
            target.sharding,
            lambda index, m=m, target=target: _read_slice(
                checkpoint, m.hf_name, m.layout, index
            ).astype(target.dtype, copy=False),
        )
        _set_leaf(params, m.path, value)
    return params


def _check_coverage(checkpoint: SafetensorsCheckpoint, wanted: Sequence[str], config) -> None:
    present = set(checkpoint.names())
    missing = [n for n in wanted if n not in present]
    if missing:
        raise HfCheckpointMismatchError(
            f"{checkpoint.directory}: {len(missing)} tensor(s) the model needs are missing, "
            f"e.g. {missing[:5]}"
        )
    ignorable = set(TIED_COPIES)
    if getattr(config, "tie_embeddings", False):
        ignorable.add("lm_head.weight")
    extra = sorted(n for n in present - set(wanted) - ignorable if not n.endswith(IGNORED_SUFFIXES))
    if extra:
        raise HfCheckpointMismatchError(
            f"{checkpoint.directory}: {len(extra)} tensor(s) have no place in the model "
            f"(another architecture or config?), e.g. {extra[:5]} in {checkpoint.file_of(extra[0])}"
        )


def _check_shape(checkpoint, name: str, layout: Layout, shape: tuple[int, ...]) -> None:
    hf_shape = tuple(checkpoint.shape(name))
    split, perm = layout.split_and_order(hf_shape)
    ok = math.prod(split) == math.prod(hf_shape) and tuple(split[p] for p in perm) == shape
    if not ok:
        raise HfCheckpointMismatchError(
            f"{checkpoint.file_of(name)}: tensor {name} has shape {list(hf_shape)}, the model "
            f"needs {list(shape)} (as {list(split)} permuted {list(perm)})"
        )


def _read_slice(checkpoint, name: str, layout: Layout, index: tuple) -> np.ndarray:
    """Our param's slice `index` (basic slices), read as the covering HF slice."""
    hf_shape = tuple(checkpoint.shape(name))
    split, perm = layout.split_and_order(hf_shape)
    split_index = [slice(None)] * len(split)
    for axis, s in zip(perm, index):
        split_index[axis] = s
    ranges = [split_index[a].indices(split[a])[:2] for a in range(len(split))]
    hf_index, block_shape, post = [], [], []
    for group in _split_groups(hf_shape, split):
        (start, stop), inner = ranges[group[0]], math.prod(split[a] for a in group[1:])
        hf_index.append(slice(start * inner, stop * inner))
        block_shape += [stop - start, *(split[a] for a in group[1:])]
        post += [slice(None), *(slice(*ranges[a]) for a in group[1:])]
    block = checkpoint.read(name, tuple(hf_index)).reshape(block_shape)
    return np.transpose(block[tuple(post)], perm)


def _split_groups(hf_shape: tuple[int, ...], split: tuple[int, ...]) -> list[list[int]]:
    """For each HF axis, the consecutive axes of `split` it was divided into."""
    groups, axis = [], 0
    for dim in hf_shape:
        group, size = [axis], split[axis]
        axis += 1
        while size < dim:
            group.append(axis)
            size *= split[axis]
            axis += 1
        groups.append(group)
    return groups


def _leaf(tree: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        tree = tree[key]
    return tree


def _set_leaf(tree: dict, path: tuple[str, ...], value: Any) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value
