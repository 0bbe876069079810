"""MeshConfig (shapes, parsing, validation) and create_mesh on the 8 simulated CPU devices."""

from __future__ import annotations

import math

import jax
import pytest
from jax.sharding import AxisType

from t5x_rationale.runtime.partitioning import MESH_AXES, MeshConfig, create_mesh


def test_eight_devices():
    assert jax.device_count() == 8, "tests/conftest.py should force 8 CPU devices"


# ===================================================================== MeshConfig


@pytest.mark.parametrize(
    "config, devices, expected",
    [
        (MeshConfig(), 8, (8, 1, 1)),
        (MeshConfig(2, 2, 2), 8, (2, 2, 2)),
        (MeshConfig(2, -1, 2), 8, (2, 2, 2)),
        (MeshConfig(1, 1, -1), 8, (1, 1, 8)),
        (MeshConfig(-1, 2, 1), 4, (2, 2, 1)),
        (MeshConfig(-1, 1, 1), 1, (1, 1, 1)),
        (MeshConfig(1, 2, 4), 8, (1, 2, 4)),
    ],
)
def test_mesh_config_shape(config, devices, expected):
    assert config.shape(devices) == expected


def test_mesh_config_shape_wrong_product_names_given_and_expected():
    with pytest.raises(ValueError) as info:
        MeshConfig(2, 2, 2).shape(4)
    msg = str(info.value)
    assert "2x2x2" in msg and "8 devices" in msg and "4 devices" in msg, msg
    with pytest.raises(ValueError, match=r"1x2x2 = 4 devices, but 8 devices"):
        MeshConfig(1, 2, 2).shape(8)


@pytest.mark.parametrize(
    "config, devices",
    [
        (MeshConfig(3, -1, 1), 8),
        (MeshConfig(-1, 1, 16), 8),
        (MeshConfig(2, 2, -1), 6),
    ],
)
def test_mesh_config_fill_axis_must_divide(config, devices):
    known = math.prod(s for s in (config.data, config.fsdp, config.tensor) if s != -1)
    with pytest.raises(ValueError, match=rf"{known} does not divide {devices}"):
        config.shape(devices)


@pytest.mark.parametrize(
    "sizes", [(0, 1, 1), (1, 0, 1), (1, 1, 0), (-2, 1, 1), (1, -3, 1), (2, 2, -5)]
)
def test_mesh_config_rejects_zero_and_negative(sizes):
    with pytest.raises(ValueError, match="positive or -1"):
        MeshConfig(*sizes)


def test_mesh_config_rejects_two_fill_axes():
    with pytest.raises(ValueError, match="at most one mesh axis may be -1"):
        MeshConfig(-1, -1, 2)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("2x2x2", MeshConfig(2, 2, 2)),
        ("-1x1x1", MeshConfig(-1, 1, 1)),
        ("8X1X1", MeshConfig(8, 1, 1)),
        ("1,2,4", MeshConfig(1, 2, 4)),
        ("1x-1x2", MeshConfig(1, -1, 2)),
    ],
)
def test_mesh_config_parse(text, expected):
    assert MeshConfig.parse(text) == expected


@pytest.mark.parametrize(
    "text, pattern",
    [
        ("2x2", "DATAxFSDPxTENSOR"),
        ("2x2x2x1", "DATAxFSDPxTENSOR"),
        ("", "DATAxFSDPxTENSOR"),
        ("axbxc", "three integers"),
        ("2.0x2x2", "three integers"),
        ("2x2x0", "positive or -1"),
        ("-1x-1x8", "at most one"),
    ],
)
def test_mesh_config_parse_rejects(text, pattern):
    with pytest.raises(ValueError, match=pattern):
        MeshConfig.parse(text)


# ==================================================================== create_mesh


def _assert_mesh(mesh, shape, devices):
    assert mesh.axis_names == MESH_AXES == ("data", "fsdp", "tensor")
    assert tuple(mesh.axis_types) == (AxisType.Auto,) * 3
    assert dict(mesh.shape) == dict(zip(MESH_AXES, shape))
    assert mesh.devices.shape == shape
    assert sorted(d.id for d in mesh.devices.flat) == sorted(d.id for d in devices)


@pytest.mark.parametrize(
    "config, shape",
    [
        (MeshConfig(2, 2, 2), (2, 2, 2)),
        (MeshConfig(), (8, 1, 1)),
        (MeshConfig(1, 1, -1), (1, 1, 8)),
    ],
)
def test_create_mesh_all_devices(config, shape):
    _assert_mesh(create_mesh(config), shape, jax.devices())


@pytest.mark.parametrize(
    "n, config, shape",
    [
        (1, MeshConfig(1, 1, 1), (1, 1, 1)),
        (1, MeshConfig(), (1, 1, 1)),
        (4, MeshConfig(), (4, 1, 1)),
        (4, MeshConfig(1, 2, 2), (1, 2, 2)),
        (4, MeshConfig(-1, 1, 2), (2, 1, 2)),
    ],
)
def test_create_mesh_device_subset(n, config, shape):
    devices = jax.devices()[:n]
    mesh = create_mesh(config, devices)
    _assert_mesh(mesh, shape, devices)
    # A subset mesh lays the given devices out in order (row-major over data, fsdp, tensor).
    assert [d.id for d in mesh.devices.flat] == [d.id for d in devices]


def test_create_mesh_subset_wrong_size_raises():
    with pytest.raises(ValueError, match=r"2x2x2 = 8 devices, but 4 devices"):
        create_mesh(MeshConfig(2, 2, 2), jax.devices()[:4])
