"""One safetensors file on NumPy: the dtype table, the errors, the header read and checked
against the file's size, and the bytes of a file laid out as the reference implementation lays
them out (tensors by descending dtype rank then name, compact JSON padded with spaces to a
multiple of 8), so written files are deterministic. bfloat16 and float8 come from ml_dtypes.

A file is an 8-byte little-endian header length N, N bytes of JSON
`{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {str: str}}`, then the
data buffer (offsets relative to its start, row-major, little-endian). Hosts are assumed
little-endian, as every JAX platform is.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping

import ml_dtypes
import numpy as np

MAX_HEADER_BYTES = 100_000_000  # the reference implementation's limit

# In the reference implementation's order: its writer sorts by this rank, descending.
DTYPES = {
    "BOOL": np.dtype(bool),
    "U8": np.dtype(np.uint8),
    "I8": np.dtype(np.int8),
    "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2),
    "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn),
    "F8_E8M0": np.dtype(ml_dtypes.float8_e8m0fnu),
    "F8_E4M3FNUZ": np.dtype(ml_dtypes.float8_e4m3fnuz),
    "F8_E5M2FNUZ": np.dtype(ml_dtypes.float8_e5m2fnuz),
    "I16": np.dtype(np.int16),
    "U16": np.dtype(np.uint16),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "I32": np.dtype(np.int32),
    "U32": np.dtype(np.uint32),
    "F32": np.dtype(np.float32),
    "C64": np.dtype(np.complex64),
    "F64": np.dtype(np.float64),
    "I64": np.dtype(np.int64),
    "U64": np.dtype(np.uint64),
}
RANK = {name: rank for rank, name in enumerate(DTYPES)}
NAME_OF = {dtype: name for name, dtype in DTYPES.items()}


class SafetensorsError(ValueError):
    """A safetensors file, index or directory that cannot be read or written as such."""


class SafetensorsNotFoundError(SafetensorsError, FileNotFoundError):
    """A directory without weights, or an index naming a shard that does not exist."""


class PickleCheckpointError(SafetensorsError):
    """A directory holding only pickle (`pytorch_model*.bin`, `*.pt`) checkpoints."""


class TensorNotFoundError(SafetensorsError, KeyError):
    """A tensor name the checkpoint does not hold (the message lists close names)."""

    def __str__(self) -> str:
        return str(self.args[0])


@dataclasses.dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives: its file, dtype, shape and absolute byte range in the file."""

    file: str
    dtype: np.dtype
    shape: tuple[int, ...]
    begin: int
    end: int


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _parse_entry(path: str, name: str, entry, data_start: int) -> TensorInfo:
    """One header entry, checked field by field; offsets made absolute."""
    where = f"{path}: tensor {name!r}"
    if not isinstance(entry, dict):
        raise SafetensorsError(f"{where}: its entry is {type(entry).__name__}, not an object")
    missing = sorted({"dtype", "shape", "data_offsets"} - entry.keys())
    if missing:
        raise SafetensorsError(f"{where}: field(s) {missing} missing")
    dtype_name, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if dtype_name not in DTYPES:
        raise SafetensorsError(
            f"{where}: field 'dtype' is {dtype_name!r}, not one of {sorted(DTYPES)}"
        )
    if not isinstance(shape, list) or not all(_is_count(d) for d in shape):
        raise SafetensorsError(f"{where}: field 'shape' is {shape!r}, not a list of sizes")
    if not (
        isinstance(offsets, list)
        and len(offsets) == 2
        and all(_is_count(o) for o in offsets)
        and offsets[0] <= offsets[1]
    ):
        raise SafetensorsError(f"{where}: field 'data_offsets' is {offsets!r}, not [begin, end]")
    dtype = DTYPES[dtype_name]
    needed = math.prod(shape) * dtype.itemsize
    if offsets[1] - offsets[0] != needed:
        raise SafetensorsError(
            f"{where}: field 'data_offsets' {offsets} spans {offsets[1] - offsets[0]} bytes, "
            f"but shape {shape} of {dtype_name} needs {needed}"
        )
    return TensorInfo(path, dtype, tuple(shape), data_start + offsets[0], data_start + offsets[1])


def _parse_metadata(path: str, metadata) -> dict[str, str]:
    if metadata is None:
        return {}
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise SafetensorsError(f"{path}: field '__metadata__' is not an object of strings")
    return dict(metadata)


def read_header(path: str) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """The tensors and `__metadata__` of one safetensors file, checked against its size.

    Args:
      path: the file.

    Returns:
      ({name: TensorInfo}, metadata). Raises SafetensorsError naming the file and the tensor or
      field for a header that is not JSON, runs past the file, or describes a tensor
      inconsistently, and for a truncated file (the first tensor, by offset, that does not fit).
    """
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise SafetensorsError(f"{path}: {size} bytes, shorter than the 8-byte header length")
        n = int.from_bytes(raw, "little")
        if n > MAX_HEADER_BYTES or 8 + n > size:
            raise SafetensorsError(
                f"{path}: header length {n} runs past the end of the file ({size} bytes)"
                if 8 + n > size
                else f"{path}: header length {n} exceeds the limit of {MAX_HEADER_BYTES}"
            )
        text = f.read(n)
    try:
        header = json.loads(text.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SafetensorsError(f"{path}: the header is not valid JSON ({e})") from None
    if not isinstance(header, dict):
        raise SafetensorsError(f"{path}: the header is {type(header).__name__}, not an object")
    metadata = _parse_metadata(path, header.pop("__metadata__", None))
    infos = {name: _parse_entry(path, name, entry, 8 + n) for name, entry in header.items()}
    for name, info in sorted(infos.items(), key=lambda item: (item[1].begin, item[1].end)):
        if info.end > size:
            raise SafetensorsError(
                f"{path}: tensor {name!r} ends at byte {info.end} but the file has {size} "
                "bytes: the file is truncated"
            )
    return infos, metadata


def as_little_endian(name, value) -> np.ndarray:
    """`value` as an array a safetensors file can hold, little-endian; else SafetensorsError."""
    if not isinstance(name, str) or name == "__metadata__":
        raise SafetensorsError(f"tensor name {name!r} is not a string or is reserved")
    array = np.asarray(value)
    if array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("<"))
    if array.dtype.newbyteorder("=") not in NAME_OF:
        raise SafetensorsError(f"tensor {name!r}: dtype {array.dtype} has no safetensors name")
    return array


def file_chunks(arrays: Mapping[str, np.ndarray], metadata: Mapping[str, str] | None):
    """The bytes of one safetensors file, laid out as the reference implementation does."""
    order = sorted(arrays, key=lambda n: (-RANK[NAME_OF[arrays[n].dtype.newbyteorder("=")]], n))
    header: dict = {}
    if metadata:
        header["__metadata__"] = {key: metadata[key] for key in sorted(metadata)}
    offset = 0
    for name in order:
        array = arrays[name]
        header[name] = {
            "dtype": NAME_OF[array.dtype.newbyteorder("=")],
            "shape": list(array.shape),
            "data_offsets": [offset, offset + array.nbytes],
        }
        offset += array.nbytes
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % 8)
    yield len(text).to_bytes(8, "little") + text
    for name in order:
        array = arrays[name]
        array = array if array.flags.c_contiguous else array.copy(order="C")
        yield memoryview(array.reshape(-1).view(np.uint8))
