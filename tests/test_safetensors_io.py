"""interop/safetensors_io: round trips (one file and sharded), sliced reads, and a cross-check
against the reference implementation (`safetensors.numpy`, a test-only dependency)."""

import json
import os
import resource

import ml_dtypes
import numpy as np
import pytest

from t5x_rationale.interop.safetensors_io import (
    INDEX_FILE,
    SINGLE_FILE,
    SafetensorsCheckpoint,
    write_safetensors,
)

BF16 = ml_dtypes.bfloat16


def _tensors() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "decoder.layers.0.w": rng.standard_normal((3, 5)).astype(np.float32),
        "decoder.layers.0.bf16": rng.standard_normal((4, 2, 3)).astype(BF16),
        "decoder.layers.1.f16": rng.standard_normal((7,)).astype(np.float16),
        "ids.i64": rng.integers(-(2**40), 2**40, (2, 3), dtype=np.int64),
        "ids.i32": rng.integers(-(2**30), 2**30, (5,), dtype=np.int32),
        "mask.bool": rng.random((3, 3)) > 0.5,
        "scalar.f32": np.array(1.5, np.float32),
        "scalar.bf16": np.array(-2.25, BF16),
        "empty.f32": np.zeros((0, 4), np.float32),
        "empty.bf16": np.zeros((2, 0, 3), BF16),
        "u8": rng.integers(0, 255, (9,), dtype=np.uint8),
    }


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal dtype, shape and bytes (bitwise, so NaNs and -0.0 count)."""
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def _header(path: str) -> tuple[int, dict]:
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        return n, json.loads(f.read(n))


@pytest.mark.parametrize("max_shard_bytes", [None, 10**9, 64])
def test_round_trip_of_every_dtype_and_shape(tmp_path, max_shard_bytes):
    tensors = _tensors()
    written = write_safetensors(tmp_path, tensors, max_shard_bytes=max_shard_bytes)
    ckpt = SafetensorsCheckpoint.open(tmp_path)
    assert ckpt.names() == sorted(tensors)
    for name, expected in tensors.items():
        assert ckpt.shape(name) == expected.shape
        assert ckpt.dtype(name) == expected.dtype
        got = ckpt.read(name)
        assert type(got) is np.ndarray and got.flags.owndata, name
        assert _same(got, expected), name
    files = sorted(os.listdir(tmp_path))
    if max_shard_bytes == 64:
        assert INDEX_FILE in files and SINGLE_FILE not in files
        shards = [f for f in files if f != INDEX_FILE]
        n = len(shards)
        assert n > 2 and shards == [
            f"model-{k:05d}-of-{n:05d}.safetensors" for k in range(1, n + 1)
        ]
        assert written == [str(tmp_path / f) for f in shards] + [str(tmp_path / INDEX_FILE)]
        index = json.loads((tmp_path / INDEX_FILE).read_text())
        assert index["metadata"]["total_size"] == sum(t.nbytes for t in tensors.values())
        assert index["weight_map"] == {
            name: os.path.basename(ckpt.file_of(name)) for name in tensors
        }
        for shard in shards:  # packed under the limit unless one tensor alone exceeds it
            _, header = _header(str(tmp_path / shard))
            sizes = [tensors[name].nbytes for name in header]
            assert sum(sizes) <= 64 or len(sizes) == 1
    else:
        assert files == [SINGLE_FILE] and written == [str(tmp_path / SINGLE_FILE)]
        assert {ckpt.file_of(name) for name in tensors} == {str(tmp_path / SINGLE_FILE)}


def test_layout_is_deterministic_and_aligned(tmp_path):
    tensors = _tensors()
    shuffled = dict(reversed(list(tensors.items())))
    write_safetensors(tmp_path / "a", tensors, metadata={"format": "pt", "b": "1"})
    write_safetensors(tmp_path / "b", shuffled, metadata={"b": "1", "format": "pt"})
    first = (tmp_path / "a" / SINGLE_FILE).read_bytes()
    assert first == (tmp_path / "b" / SINGLE_FILE).read_bytes()
    n, header = _header(str(tmp_path / "a" / SINGLE_FILE))
    text = first[8 : 8 + n]
    assert n % 8 == 0 and text.rstrip(b" ").endswith(b"}") and n - len(text.rstrip(b" ")) < 8
    assert list(header)[0] == "__metadata__"
    assert header.pop("__metadata__") == {"b": "1", "format": "pt"}
    for name, entry in header.items():
        begin, _ = entry["data_offsets"]
        assert begin % tensors[name].dtype.itemsize == 0, name
    assert SafetensorsCheckpoint.open(tmp_path / "a").metadata == {"b": "1", "format": "pt"}


def test_rewrite_replaces_the_other_layout(tmp_path):
    tensors = _tensors()
    write_safetensors(tmp_path, tensors, max_shard_bytes=64)
    write_safetensors(tmp_path, tensors)
    assert sorted(os.listdir(tmp_path)) == [SINGLE_FILE]
    write_safetensors(tmp_path, tensors, max_shard_bytes=200)
    assert SINGLE_FILE not in os.listdir(tmp_path)
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".partial")]
    ckpt = SafetensorsCheckpoint.open(tmp_path)
    assert all(_same(ckpt.read(name), tensors[name]) for name in tensors)


def test_big_endian_and_non_contiguous_inputs_are_written_as_little_endian(tmp_path):
    base = np.arange(24, dtype=np.float32).reshape(4, 6)
    tensors = {"be": base.astype(">f4"), "transposed": base.T, "strided": base[:, ::2]}
    write_safetensors(tmp_path, tensors)
    ckpt = SafetensorsCheckpoint.open(tmp_path)
    assert _same(ckpt.read("be"), base)
    assert _same(ckpt.read("transposed"), np.ascontiguousarray(base.T))
    assert _same(ckpt.read("strided"), np.ascontiguousarray(base[:, ::2]))


INDICES = [
    (),
    (2,),
    (-1,),
    (slice(1, 4),),
    (slice(None), slice(2, 5)),
    (1, slice(None), 3),
    (Ellipsis, slice(7, 10)),
    (slice(1, 3), slice(None), slice(4, 9)),
    (slice(2, 2),),
    (5, 7, 9),
    (slice(None), 0),
    (slice(0, 6, 2), slice(1, None, 3)),
]


@pytest.mark.parametrize("dtype", [np.float32, BF16, np.int64])
@pytest.mark.parametrize("index", INDICES, ids=repr)
def test_read_of_a_slice_equals_the_slice_of_the_tensor(tmp_path, dtype, index):
    full = np.random.default_rng(1).standard_normal((6, 8, 10)).astype(dtype)
    write_safetensors(tmp_path, {"a": np.ones((3,), np.int8), "t": full}, max_shard_bytes=4)
    got = SafetensorsCheckpoint.open(tmp_path).read("t", index)
    assert type(got) is np.ndarray
    assert _same(got, np.asarray(full[index]))


def test_a_single_int_index_and_a_slice_of_an_empty_tensor(tmp_path):
    full = np.arange(12, dtype=np.int32).reshape(3, 4)
    write_safetensors(tmp_path, {"t": full, "e": np.zeros((0, 5), BF16)})
    ckpt = SafetensorsCheckpoint.open(tmp_path)
    assert _same(ckpt.read("t", 1), full[1])
    assert _same(ckpt.read("e", (slice(None), slice(1, 3))), np.zeros((0, 2), BF16))
    with pytest.raises(TypeError, match="'t'"):
        ckpt.read("t", ([0, 2],))


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def test_a_slice_of_a_huge_tensor_reads_only_that_slice(tmp_path):
    """A 2 GiB tensor in a sparse file: reading two rows must not hold the tensor in memory."""
    rows, cols = 2**15, 2**14
    nbytes = rows * cols * 4
    header = json.dumps({"w": {"dtype": "F32", "shape": [rows, cols], "data_offsets": [0, nbytes]}})
    header += " " * (-len(header) % 8)
    path = tmp_path / SINGLE_FILE
    with open(path, "wb") as f:
        f.write(len(header).to_bytes(8, "little") + header.encode())
        f.seek(8 + len(header) + nbytes - 1)
        f.write(b"\0")
    before = _peak_rss_bytes()
    part = SafetensorsCheckpoint.open(tmp_path).read("w", (slice(100, 102), slice(None)))
    assert part.shape == (2, cols) and not part.any()
    assert _peak_rss_bytes() - before < 256 * 2**20


def test_files_of_the_reference_writer_read_identically(tmp_path):
    from safetensors.numpy import save_file

    tensors = _tensors()
    save_file(tensors, str(tmp_path / SINGLE_FILE), metadata={"format": "pt"})
    ckpt = SafetensorsCheckpoint.open(tmp_path)
    assert ckpt.names() == sorted(tensors) and ckpt.metadata == {"format": "pt"}
    for name, expected in tensors.items():
        assert _same(ckpt.read(name), expected), name
    # same layout rules, so the same bytes
    write_safetensors(tmp_path / "ours", tensors, metadata={"format": "pt"})
    assert (tmp_path / "ours" / SINGLE_FILE).read_bytes() == (tmp_path / SINGLE_FILE).read_bytes()


def test_files_of_our_writer_load_identically_in_the_reference_reader(tmp_path):
    from safetensors.numpy import load_file

    tensors = _tensors()
    for path in write_safetensors(tmp_path, tensors, max_shard_bytes=100)[:-1]:
        for name, got in load_file(path).items():
            assert _same(np.asarray(got), tensors.pop(name)), name
    assert not tensors
