"""Hugging Face model directories in safetensors, on NumPy (no torch): read one
`model.safetensors` or a `model.safetensors.index.json` with its shards slice by slice, and write
one file or HF-named shards plus an index, each file written aside and renamed when complete.

An index is `{"metadata": {"total_size"}, "weight_map": {name: shard file}}`. The format of one
file lives in `safetensors_format`; its errors are re-exported here.
"""

from __future__ import annotations

import difflib
import json
import os
import re
from collections.abc import Mapping

import numpy as np

from t5x_rationale.interop.safetensors_format import (
    PickleCheckpointError,
    SafetensorsError,
    SafetensorsNotFoundError,
    TensorInfo,
    TensorNotFoundError,
    as_little_endian,
    file_chunks,
    read_header,
)

__all__ = [
    "INDEX_FILE",
    "SINGLE_FILE",
    "PickleCheckpointError",
    "SafetensorsCheckpoint",
    "SafetensorsError",
    "SafetensorsNotFoundError",
    "TensorInfo",
    "TensorNotFoundError",
    "read_header",
    "write_safetensors",
]

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
_SHARD_NAME = re.compile(r"model-\d{5}-of-\d{5}\.safetensors")


def _read_index(index_path: str) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """The tensors of a sharded checkpoint: every shard of the index exists and holds its
    tensors."""
    try:
        with open(index_path, encoding="utf-8") as f:
            index = json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SafetensorsError(f"{index_path}: not valid JSON ({e})") from None
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()
    ):
        raise SafetensorsError(f"{index_path}: field 'weight_map' is not an object of strings")
    by_shard: dict[str, list[str]] = {}
    for name, shard in sorted(weight_map.items()):
        by_shard.setdefault(shard, []).append(name)
    directory = os.path.dirname(index_path)
    for shard, names in sorted(by_shard.items()):
        if not os.path.isfile(os.path.join(directory, shard)):
            raise SafetensorsNotFoundError(
                f"{index_path} maps {len(names)} tensor(s), e.g. {names[0]!r}, to shard "
                f"{shard!r}, which does not exist in {directory}"
            )
    tensors: dict[str, TensorInfo] = {}
    metadata: dict[str, str] = {}
    for shard, names in sorted(by_shard.items()):
        infos, shard_metadata = read_header(os.path.join(directory, shard))
        for name in names:
            if name not in infos:
                raise SafetensorsError(
                    f"{index_path} maps tensor {name!r} to shard {shard!r}, which does not hold it"
                )
            tensors[name] = infos[name]
        metadata.update(shard_metadata)
    return tensors, metadata


def _refuse_without_safetensors(directory: str):
    pickles = sorted(f for f in os.listdir(directory) if f.endswith(_PICKLE_SUFFIXES))
    if pickles:
        raise PickleCheckpointError(
            f"{directory} holds only pickle checkpoints ({', '.join(pickles)}), no "
            f"{SINGLE_FILE} or {INDEX_FILE}. Pickle files are refused: loading one can run "
            "arbitrary code, and reading it needs torch. Convert it where torch is installed, "
            "with transformers: AutoModelForCausalLM (or the model's class).from_pretrained(dir)"
            ".save_pretrained(out, safe_serialization=True)."
        )
    others = sorted(f for f in os.listdir(directory) if f.endswith(".safetensors"))
    raise SafetensorsNotFoundError(
        f"{directory}: neither {SINGLE_FILE} nor {INDEX_FILE}"
        + (f" (it holds {others}: open one by its path)" if others else "")
    )


def _basic_index(name: str, index) -> tuple:
    index = index if isinstance(index, tuple) else (index,)
    for part in index:
        if not isinstance(part, (int, np.integer, slice)) and part is not Ellipsis:
            raise TypeError(f"tensor {name!r}: index {index!r} is not basic (ints and slices)")
    return index


class SafetensorsCheckpoint:
    """The tensors of a Hugging Face model directory (one file or an index of shards).

    Opening reads and checks every header (no tensor data); `read` maps only the bytes of the
    requested slice, so a host that reads its devices' slices of a tensor never holds the rest.
    """

    def __init__(self, directory: str, tensors: Mapping[str, TensorInfo], metadata: dict):
        self.directory = directory
        self.metadata = metadata
        self._tensors = dict(tensors)

    @classmethod
    def open(cls, directory: str) -> SafetensorsCheckpoint:
        """`directory/model.safetensors`, or `model.safetensors.index.json` and its shards (the
        index wins when both exist); a path to one `.safetensors` file opens that file.

        Raises:
          SafetensorsNotFoundError: no such directory, no weights, or an index naming a missing
            shard. PickleCheckpointError: only pickle checkpoints (`*.bin`, `*.pt`) are there.
          SafetensorsError: a malformed or truncated file (see `read_header`).
        """
        directory = os.fspath(directory)
        if os.path.isfile(directory) and directory.endswith(".safetensors"):
            return cls(directory, *read_header(directory))
        if not os.path.isdir(directory):
            raise SafetensorsNotFoundError(f"{directory}: no such directory")
        index_path = os.path.join(directory, INDEX_FILE)
        if os.path.isfile(index_path):
            return cls(directory, *_read_index(index_path))
        single = os.path.join(directory, SINGLE_FILE)
        if os.path.isfile(single):
            return cls(directory, *read_header(single))
        _refuse_without_safetensors(directory)

    def __contains__(self, name: str) -> bool:
        return name in self._tensors

    def __len__(self) -> int:
        return len(self._tensors)

    def info(self, name: str) -> TensorInfo:
        """The tensor's file, dtype, shape and byte range; TensorNotFoundError lists close names."""
        if name not in self._tensors:
            close = difflib.get_close_matches(name, self._tensors, n=5, cutoff=0.6)
            raise TensorNotFoundError(
                f"{self.directory}: no tensor {name!r} among {len(self._tensors)}"
                + (f"; close names: {close}" if close else "")
            )
        return self._tensors[name]

    def names(self) -> list[str]:
        return sorted(self._tensors)

    def shape(self, name: str) -> tuple[int, ...]:
        return self.info(name).shape

    def dtype(self, name: str) -> np.dtype:
        return self.info(name).dtype

    def file_of(self, name: str) -> str:
        return self.info(name).file

    def read(self, name: str, index: tuple = ()) -> np.ndarray:
        """`tensor[index]` as a fresh array, reading only the pages the slice covers.

        Args:
          name: the tensor.
          index: a basic index (ints, slices, one Ellipsis); () reads the whole tensor.
        """
        info = self.info(name)
        index = _basic_index(name, index)
        if info.end == info.begin:
            return np.zeros(info.shape, info.dtype)[index].copy()
        mapped = np.memmap(info.file, info.dtype, "r", offset=info.begin, shape=info.shape)
        return np.array(mapped[index])


def _plan_shards(arrays: Mapping[str, np.ndarray], max_shard_bytes: int | None) -> list[list]:
    """Names in sorted order, greedily packed; a tensor larger than the limit is a shard alone."""
    shards: list[list[str]] = [[]]
    size = 0
    for name in sorted(arrays):
        nbytes = arrays[name].nbytes
        if max_shard_bytes is not None and shards[-1] and size + nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += nbytes
    return shards


def write_file_aside(path: str, chunks) -> None:
    """Write to `path.partial`, fsync, then rename over `path`: readers never see half a file."""
    partial = path + ".partial"
    try:
        with open(partial, "wb") as f:
            for chunk in chunks:
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        os.replace(partial, path)
    except BaseException:
        if os.path.exists(partial):
            os.unlink(partial)
        raise


def write_safetensors(
    directory: str,
    tensors: Mapping[str, np.ndarray],
    *,
    max_shard_bytes: int | None = None,
    metadata: Mapping[str, str] | None = None,
) -> list[str]:
    """Write `tensors` as `model.safetensors`, or as HF-named shards plus an index.

    Each file is written aside and renamed when complete (the index last); weight files of an
    earlier write under HF names that this write did not produce are removed afterwards.

    Args:
      directory: created if absent.
      tensors: name -> array (anything `np.asarray` takes); bfloat16/float8 via ml_dtypes.
      max_shard_bytes: shard when the tensors exceed it (`model-0000k-of-0000n.safetensors`,
        names packed in sorted order; a larger tensor gets a shard of its own).
      metadata: the `__metadata__` of every file; `transformers` expects {"format": "pt"}.

    Returns:
      The paths written: the weight files in order, then the index if sharded.
    """
    arrays = {name: as_little_endian(name, value) for name, value in tensors.items()}
    if metadata is not None and not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise SafetensorsError(f"{directory}: field '__metadata__' must map strings to strings")
    shards = _plan_shards(arrays, max_shard_bytes)
    n = len(shards)
    files = (
        [SINGLE_FILE]
        if n == 1
        else [f"model-{k:05d}-of-{n:05d}.safetensors" for k in range(1, n + 1)]
    )
    os.makedirs(directory, exist_ok=True)
    written = []
    for file, names in zip(files, shards):
        path = os.path.join(directory, file)
        write_file_aside(path, file_chunks({name: arrays[name] for name in names}, metadata))
        written.append(path)
    if n > 1:
        index = {
            "metadata": {"total_size": sum(a.nbytes for a in arrays.values())},
            "weight_map": {name: file for file, names in zip(files, shards) for name in names},
        }
        path = os.path.join(directory, INDEX_FILE)
        write_file_aside(path, [(json.dumps(index, indent=2, sort_keys=True) + "\n").encode()])
        written.append(path)
    kept = {os.path.basename(path) for path in written}
    for stale in os.listdir(directory):
        if stale not in kept and (
            stale in (SINGLE_FILE, INDEX_FILE) or _SHARD_NAME.fullmatch(stale)
        ):
            os.unlink(os.path.join(directory, stale))
    return written
