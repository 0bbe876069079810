"""interop/safetensors_io on bad input: every error names the file and the tensor or field."""

import json
import os

import numpy as np
import pytest

from t5x_rationale.interop.safetensors_io import (
    INDEX_FILE,
    SINGLE_FILE,
    PickleCheckpointError,
    SafetensorsCheckpoint,
    SafetensorsError,
    SafetensorsNotFoundError,
    TensorNotFoundError,
    write_safetensors,
)


def _raw_file(path, header, data: bytes = b"", *, length: int | None = None) -> str:
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write((len(text) if length is None else length).to_bytes(8, "little") + text + data)
    return str(path)


def _open_error(directory, error=SafetensorsError) -> str:
    with pytest.raises(error) as info:
        SafetensorsCheckpoint.open(directory)
    return str(info.value)


def test_garbage_header_json_names_the_file(tmp_path):
    path = _raw_file(tmp_path / SINGLE_FILE, b'{"w": {"dtype": "F32", garbage')
    message = _open_error(tmp_path)
    assert path in message and "header is not valid JSON" in message


def test_a_header_length_beyond_the_file_names_the_file_and_the_length(tmp_path):
    path = _raw_file(tmp_path / SINGLE_FILE, b"{}", length=4096)
    message = _open_error(tmp_path)
    assert path in message and "header length 4096" in message and "past the end" in message


def test_a_file_shorter_than_the_header_length_field(tmp_path):
    (tmp_path / SINGLE_FILE).write_bytes(b"\x10\x00")
    assert str(tmp_path / SINGLE_FILE) in _open_error(tmp_path)


@pytest.mark.parametrize("cut, first_missing", [(4, "b"), (40, "a")])
def test_a_truncated_file_names_the_first_tensor_that_does_not_fit(tmp_path, cut, first_missing):
    write_safetensors(tmp_path, {"a": np.ones((4, 4), np.float32), "b": np.ones(8, np.float32)})
    path = tmp_path / SINGLE_FILE
    data = path.read_bytes()
    path.write_bytes(data[:-cut])
    message = _open_error(tmp_path)
    assert str(path) in message and f"tensor {first_missing!r}" in message
    assert "truncated" in message


def test_offsets_inconsistent_with_shape_and_dtype_name_the_tensor_and_field(tmp_path):
    header = {"w": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 20]}}
    path = _raw_file(tmp_path / SINGLE_FILE, header, b"\0" * 20)
    message = _open_error(tmp_path)
    assert path in message and "'w'" in message and "data_offsets" in message
    assert "needs 24" in message


@pytest.mark.parametrize(
    "entry, field",
    [
        ({"dtype": "Q4_K", "shape": [2], "data_offsets": [0, 2]}, "'dtype'"),
        ({"dtype": "F32", "shape": [2, -1], "data_offsets": [0, 8]}, "'shape'"),
        ({"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}, "'data_offsets'"),
        ({"dtype": "F32", "shape": [2]}, "'data_offsets'"),
        ([1, 2], "not an object"),
    ],
)
def test_a_malformed_entry_names_the_tensor_and_field(tmp_path, entry, field):
    path = _raw_file(tmp_path / SINGLE_FILE, {"emb": entry}, b"\0" * 8)
    message = _open_error(tmp_path)
    assert path in message and "'emb'" in message and field in message


def test_metadata_that_is_not_strings_names_the_field(tmp_path):
    header = {"__metadata__": {"format": 1}}
    path = _raw_file(tmp_path / SINGLE_FILE, header)
    message = _open_error(tmp_path)
    assert path in message and "__metadata__" in message


def test_an_index_naming_a_missing_shard_names_the_index_the_shard_and_a_tensor(tmp_path):
    tensors = {f"layer{i}.w": np.full((8,), i, np.float32) for i in range(4)}
    write_safetensors(tmp_path, tensors, max_shard_bytes=64)
    weight_map = json.loads((tmp_path / INDEX_FILE).read_text())["weight_map"]
    shard = weight_map["layer2.w"]
    os.unlink(tmp_path / shard)
    message = _open_error(tmp_path, SafetensorsNotFoundError)
    assert str(tmp_path / INDEX_FILE) in message and repr(shard) in message
    assert "'layer2.w'" in message
    with pytest.raises(FileNotFoundError):
        SafetensorsCheckpoint.open(tmp_path)


def test_an_index_mapping_a_tensor_to_a_shard_without_it(tmp_path):
    write_safetensors(
        tmp_path, {"a": np.ones(8, np.float32), "b": np.ones(8, np.float32)}, max_shard_bytes=32
    )
    index = json.loads((tmp_path / INDEX_FILE).read_text())
    index["weight_map"]["c"] = index["weight_map"]["a"]
    (tmp_path / INDEX_FILE).write_text(json.dumps(index))
    message = _open_error(tmp_path)
    assert str(tmp_path / INDEX_FILE) in message and "'c'" in message
    assert repr(index["weight_map"]["a"]) in message


def test_an_index_that_is_not_json_or_has_no_weight_map(tmp_path):
    (tmp_path / INDEX_FILE).write_text("{oops")
    assert str(tmp_path / INDEX_FILE) in _open_error(tmp_path)
    (tmp_path / INDEX_FILE).write_text('{"metadata": {}}')
    message = _open_error(tmp_path)
    assert str(tmp_path / INDEX_FILE) in message and "'weight_map'" in message


def test_a_missing_tensor_name_lists_close_names(tmp_path):
    write_safetensors(
        tmp_path,
        {"model.layers.0.self_attn.q_proj.weight": np.ones(2), "lm_head.weight": np.ones(2)},
    )
    ckpt = SafetensorsCheckpoint.open(tmp_path)
    with pytest.raises(TensorNotFoundError) as info:
        ckpt.read("model.layers.0.self_attn.k_proj.weight")
    message = str(info.value)
    assert str(tmp_path) in message and "'model.layers.0.self_attn.k_proj.weight'" in message
    assert "close names: ['model.layers.0.self_attn.q_proj.weight']" in message
    assert isinstance(info.value, KeyError) and isinstance(info.value, ValueError)
    with pytest.raises(KeyError):
        ckpt.shape("nothing.like.it")


def test_a_directory_with_only_pickle_checkpoints_is_refused_with_the_reason(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "pytorch_model-00001-of-00002.bin").write_bytes(b"\x80\x04")
    (tmp_path / "pytorch_model-00002-of-00002.bin").write_bytes(b"\x80\x04")
    message = _open_error(tmp_path, PickleCheckpointError)
    assert str(tmp_path) in message and "pytorch_model-00001-of-00002.bin" in message
    assert "arbitrary code" in message and "torch" in message
    assert "safe_serialization=True" in message


def test_a_directory_without_weights_and_a_missing_directory(tmp_path):
    message = _open_error(tmp_path, SafetensorsNotFoundError)
    assert str(tmp_path) in message and SINGLE_FILE in message and INDEX_FILE in message
    assert str(tmp_path / "nope") in _open_error(tmp_path / "nope", FileNotFoundError)


def test_the_writer_refuses_a_dtype_without_a_safetensors_name(tmp_path):
    with pytest.raises(SafetensorsError, match="'names'.*<U"):
        write_safetensors(tmp_path, {"names": np.array(["a", "b"])})
    with pytest.raises(SafetensorsError, match="__metadata__"):
        write_safetensors(tmp_path, {"x": np.ones(2)}, metadata={"step": 3})
    assert not os.listdir(tmp_path)


def test_a_single_safetensors_file_opens_by_path(tmp_path):
    write_safetensors(tmp_path, {"thought": np.arange(3, dtype=np.float32)})
    os.rename(tmp_path / SINGLE_FILE, tmp_path / "quiet_star.safetensors")
    ckpt = SafetensorsCheckpoint.open(tmp_path / "quiet_star.safetensors")
    assert ckpt.read("thought").tolist() == [0.0, 1.0, 2.0]
