"""Logical-axis resolution and the Partitioner: param shardings, batches, describe()."""

from __future__ import annotations

import math
import re

import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from t5x_rationale.architectures import build_model, dummy_batch, get_preset
from t5x_rationale.architectures.axes import resolve_spec
from t5x_rationale.objectives import token_loss
from t5x_rationale.runtime.optimizers import OptimizerConfig, make_optimizer
from t5x_rationale.runtime.partitioning import (
    MeshConfig,
    Partitioner,
    create_mesh,
    standard_logical_axis_rules,
)
from t5x_rationale.runtime.trainer import Trainer, abstract_params

# Expected PartitionSpecs are written out by hand from the rules in the module docstrings
# (runtime/partitioning.py, architectures/axes.py), not recomputed with the code under test.
RULES = standard_logical_axis_rules()
MESH_222 = {"data": 2, "fsdp": 2, "tensor": 2}


# ==================================================================== resolve_spec


@pytest.mark.parametrize(
    "logical, shape, expected",
    [
        # batch takes data+fsdp first, so embed in the same array cannot use fsdp.
        (("batch", "length", "embed"), (8, 16, 64), P(("data", "fsdp"), None, None)),
        (("embed", "mlp"), (64, 128), P("fsdp", "tensor")),
        (("mlp", "embed"), (128, 64), P("tensor", "fsdp")),
        (("vocab", "embed"), (256, 64), P("tensor", "fsdp")),
        (("embed", "vocab"), (64, 256), P("fsdp", "tensor")),
        (("embed", "heads", "kv"), (64, 8, 8), P("fsdp", "tensor", None)),
        (("heads", "kv", "embed"), (8, 8, 64), P("tensor", None, "fsdp")),
        (("embed", "kv_heads", "kv"), (64, 4, 8), P("fsdp", "tensor", None)),
        (
            ("batch", "length", "heads", "kv"),
            (8, 16, 8, 8),
            P(("data", "fsdp"), None, "tensor", None),
        ),
        (("batch", "length", "vocab"), (8, 16, 256), P(("data", "fsdp"), None, "tensor")),
        (("heads", "relpos_buckets"), (8, 16), P("tensor", None)),
        (("embed",), (64,), P("fsdp")),
        ((None, "embed"), (3, 64), P(None, "fsdp")),
        ((None, None), (3, 5), P(None, None)),
        (("layers", "embed", "mlp"), (2, 64, 128), P(None, "fsdp", "tensor")),
        # Rule order decides, not dimension order: batch (rule 1) beats embed (rule 6) for fsdp.
        (("embed", "batch"), (64, 8), P(None, ("data", "fsdp"))),
        # vocab (rule 2) beats mlp (rule 3) for tensor.
        (("mlp", "vocab"), (128, 256), P(None, "tensor")),
        # The same name twice: the first dimension takes the axis, the second is replicated.
        (("mlp", "mlp"), (128, 128), P("tensor", None)),
    ],
)
def test_resolve_spec_standard_rules(logical, shape, expected):
    spec, notes = resolve_spec(logical, shape, RULES, MESH_222)
    assert spec == expected
    assert notes == []


def test_resolve_spec_falls_back_to_later_rule_for_same_name():
    rules = [("embed", "fsdp"), ("batch", ("data", "fsdp")), ("batch", "data")]
    spec, notes = resolve_spec(("batch", "embed"), (8, 64), rules, MESH_222)
    assert spec == P("data", "fsdp")
    assert notes == []
    # Without the conflict the first batch rule wins.
    spec, _ = resolve_spec(("batch", None), (8, 64), rules, MESH_222)
    assert spec == P(("data", "fsdp"), None)


def test_resolve_spec_drops_axes_from_end_when_not_divisible():
    # batch 2 is divisible by data (2) but not by data x fsdp (4): keep data only.
    spec, notes = resolve_spec(("batch", "length", "embed"), (2, 16, 64), RULES, MESH_222)
    assert spec == P("data", None, None)
    assert len(notes) == 1
    assert "dim 0" in notes[0] and "batch" in notes[0] and "size 2" in notes[0], notes
    assert "('data',)" in notes[0], notes

    # batch 3: nothing divides, replicated.
    spec, notes = resolve_spec(("batch", "length"), (3, 16), RULES, MESH_222)
    assert spec == P(None, None)
    assert len(notes) == 1 and "size 3" in notes[0] and "nothing" in notes[0], notes

    # Only the indivisible dimension is affected.
    spec, notes = resolve_spec(
        ("embed", "kv_heads", "kv"), (64, 4, 8), RULES, {"data": 1, "fsdp": 2, "tensor": 8}
    )
    assert spec == P("fsdp", None, None)
    assert (
        len(notes) == 1 and "dim 1" in notes[0] and "kv_heads" in notes[0] and "size 4" in notes[0]
    )

    spec, notes = resolve_spec(
        ("embed", "mlp"), (6, 128), RULES, {"data": 1, "fsdp": 4, "tensor": 2}
    )
    assert spec == P(None, "tensor")
    assert len(notes) == 1 and "dim 0" in notes[0] and "embed" in notes[0]


def test_resolve_spec_unknown_logical_name():
    with pytest.raises(ValueError, match="'heeds'"):
        resolve_spec(("embed", "heeds"), (64, 8), RULES, MESH_222)
    # Not strict (activations): unknown names are replicated.
    spec, notes = resolve_spec(("embed", "heeds"), (64, 8), RULES, MESH_222, strict=False)
    assert spec == P("fsdp", None)
    assert notes == []


def test_resolve_spec_rule_naming_axis_not_in_mesh():
    rules = list(RULES) + [("experts", "expert")]
    with pytest.raises(ValueError) as info:
        resolve_spec(("experts", "embed"), (4, 64), rules, MESH_222)
    assert "expert" in str(info.value) and "experts" in str(info.value)
    with pytest.raises(ValueError, match="model"):
        resolve_spec(("embed",), (64,), [("embed", "model")], MESH_222)


def test_resolve_spec_rank_mismatch():
    with pytest.raises(ValueError, match="do not match shape"):
        resolve_spec(("embed", "mlp"), (64,), RULES, MESH_222)


# ===================================================================== Partitioner


def _trainer(preset: str, mesh_config: MeshConfig, optimizer: str = "adamw"):
    config = get_preset(preset)
    tx, _ = make_optimizer(OptimizerConfig(name=optimizer))
    partitioner = Partitioner(create_mesh(mesh_config))
    example = dummy_batch(
        config,
        8,
        target_length=8,
        input_length=8 if config.architecture == "encoder_decoder" else 0,
    )
    return Trainer(build_model(config), token_loss, tx, partitioner), example


def _expected_param_spec(path: str, mesh_shape: dict, kv_heads: int) -> P:
    """Hand-written expectations for the tiny presets (emb 64, mlp 128, vocab 256, 8 heads)."""
    if path.endswith("['scale']"):
        return P("fsdp")
    if "['embedding']" in path:
        return P("tensor", "fsdp")
    if "['logits_dense']" in path or "['wi_0']" in path or "['wi_1']" in path:
        return P("fsdp", "tensor")
    if "['wo']" in path:
        return P("tensor", "fsdp")
    if "['rel_embedding']" in path:
        return P("tensor", None)
    if "['out']" in path:
        return P("tensor", None, "fsdp")
    if "['query']" in path:
        return P("fsdp", "tensor", None)
    if "['key']" in path or "['value']" in path:
        return P("fsdp", "tensor" if kv_heads % mesh_shape["tensor"] == 0 else None, None)
    raise AssertionError(f"unexpected parameter {path}")


@pytest.mark.parametrize("preset", ["decoder-tiny", "t5-tiny"])
@pytest.mark.parametrize(
    "mesh_config", [MeshConfig(1, 1, 8), MeshConfig(2, 2, 2)], ids=["1x1x8", "2x2x2"]
)
def test_shardings_for_tiny_models(preset, mesh_config):
    trainer, example = _trainer(preset, mesh_config)
    abstract, specs, shardings, notes = trainer.layout(example)
    mesh = trainer.partitioner.mesh
    kv_heads = (
        get_preset(preset).num_heads if preset.startswith("t5") else get_preset(preset).kv_heads
    )

    params = jax.tree_util.tree_flatten_with_path(abstract.params)[0]
    param_shardings = jax.tree_util.tree_flatten_with_path(
        shardings.params, is_leaf=lambda x: isinstance(x, NamedSharding)
    )[0]
    assert len(params) == len(param_shardings) > 10
    assert [p for p, _ in params] == [p for p, _ in param_shardings]
    for (path, leaf), (_, sharding) in zip(params, param_shardings):
        name = jax.tree_util.keystr(path)
        assert isinstance(sharding, NamedSharding), name
        assert sharding.mesh == mesh, name
        assert sharding.spec == _expected_param_spec(name, dict(mesh.shape), kv_heads), name
        # The sharding is usable for the leaf (even shards).
        sharding.shard_shape(leaf.shape)

    # Scalars of the state are replicated.
    for name in ("step", "rng", "skipped_steps", "bad_streak"):
        assert getattr(shardings, name).is_fully_replicated, name

    param_notes = [n for n in notes if n.startswith(".params")]
    if preset == "decoder-tiny" and mesh_config == MeshConfig(1, 1, 8):
        expected = {
            f".params['decoder']['layers_{i}']['self_attention']['{kv}']['kernel']"
            for i in range(2)
            for kv in ("key", "value")
        }
        assert {n.split(":")[0] for n in param_notes} == expected
        for n in notes:  # optimizer moments follow their params
            assert "dim 1 (kv_heads, size 4)" in n and "('tensor',)" in n, n
    else:
        assert notes == []


@pytest.mark.parametrize(
    "mesh_config, kv_spec",
    [(MeshConfig(1, 1, 8), P(None, None)), (MeshConfig(2, 2, 2), P("tensor", None))],
    ids=["1x1x8", "2x2x2"],
)
def test_attention_biases_are_sharded_like_their_kernels_heads(mesh_config, kv_spec):
    """q/k/v biases [heads, head_dim]: the heads split over `tensor` as in the kernel (the 4
    kv heads of decoder-tiny do not divide a tensor axis of 8: replicated, as the kernel)."""
    config = get_preset("decoder-tiny", attention_bias=True)
    partitioner = Partitioner(create_mesh(mesh_config))
    example = dummy_batch(config, 8, target_length=8)
    abstract = abstract_params(build_model(config), partitioner, example)
    for i in range(config.num_layers):
        attention = abstract["decoder"][f"layers_{i}"]["self_attention"]
        assert "bias" not in attention["out"]
        for name, spec in (("query", P("tensor", None)), ("key", kv_spec), ("value", kv_spec)):
            kernel, bias = attention[name]["kernel"], attention[name]["bias"]
            assert bias.shape == kernel.shape[1:], name
            assert bias.sharding.spec == spec == P(*kernel.sharding.spec[1:]), name


def test_shardings_for_unannotated_and_unknown_leaves():
    partitioner = Partitioner(create_mesh(MeshConfig(2, 2, 2)))
    tree = {
        "a": jax.ShapeDtypeStruct((8, 4), np.float32),
        "b": jax.ShapeDtypeStruct((6,), np.float32),
    }
    shardings, notes = partitioner.shardings_for(tree, {"a": P("embed", "mlp"), "b": None})
    assert shardings["a"] == NamedSharding(partitioner.mesh, P("fsdp", "tensor"))
    assert shardings["b"].spec == P(None)
    assert notes == []

    # fsdp=2 divides 6, so b is sharded; a 3-element leaf is replicated with a note naming it.
    shardings, notes = partitioner.shardings_for(tree, {"a": P("embed", None), "b": P("embed")})
    assert shardings["b"].spec == P("fsdp")
    assert notes == []
    tree["b"] = jax.ShapeDtypeStruct((3,), np.float32)
    shardings, notes = partitioner.shardings_for(tree, {"a": P("embed", None), "b": P("embed")})
    assert shardings["a"].spec == P("fsdp", None)
    assert shardings["b"].spec == P(None)
    assert len(notes) == 1 and notes[0].startswith("['b']") and "size 3" in notes[0], notes

    with pytest.raises(ValueError, match=r"\['a'\].*'nope'"):
        partitioner.shardings_for(tree, {"a": P("nope", None), "b": None})


# ======================================================================== batches


def test_check_global_batch_size():
    partitioner = Partitioner(create_mesh(MeshConfig(2, 2, 2)))
    assert partitioner.batch_shards == 4
    for ok in (4, 8, 64):
        partitioner.check_global_batch_size(ok)
    with pytest.raises(ValueError) as info:
        partitioner.check_global_batch_size(6)
    msg = str(info.value)
    assert "6" in msg and "data x fsdp" in msg and "2x2 = 4" in msg, msg

    p8 = Partitioner(create_mesh(MeshConfig(1, 8, 1)))
    with pytest.raises(ValueError, match=r"global batch size 12 .*data x fsdp = 1x8 = 8"):
        p8.check_global_batch_size(12)
    # tensor does not split the batch.
    Partitioner(create_mesh(MeshConfig(1, 1, 8))).check_global_batch_size(3)


@pytest.mark.parametrize(
    "mesh_config",
    [MeshConfig(2, 2, 2), MeshConfig(8, 1, 1), MeshConfig(1, 2, 4)],
    ids=["2x2x2", "8x1x1", "1x2x4"],
)
def test_host_batch_to_global(mesh_config):
    partitioner = Partitioner(create_mesh(mesh_config))
    rng = np.random.default_rng(0)
    batch = {
        "tokens": rng.integers(0, 100, (8, 5), dtype=np.int32),
        "weights": rng.random((8, 5)).astype(np.float32),
        "ids": np.arange(8, dtype=np.int32),
    }
    out = partitioner.host_batch_to_global(batch)
    assert set(out) == set(batch)
    for name, host in batch.items():
        arr = out[name]
        assert isinstance(arr, jax.Array)
        assert arr.shape == host.shape and arr.dtype == host.dtype
        expected = NamedSharding(partitioner.mesh, P(("data", "fsdp"), *([None] * (host.ndim - 1))))
        assert arr.sharding == expected
        np.testing.assert_array_equal(np.asarray(arr), host)
        rows = 8 // partitioner.batch_shards
        for shard in arr.addressable_shards:
            assert shard.data.shape[0] == rows
            np.testing.assert_array_equal(np.asarray(shard.data), host[shard.index])

    with pytest.raises(ValueError, match="not divisible"):
        partitioner.host_batch_to_global(
            {"tokens": np.zeros((partitioner.batch_shards + 1, 4), np.int32)}
        )


# ======================================================================= describe


def test_describe_lists_every_param():
    trainer, example = _trainer("decoder-tiny", MeshConfig(2, 2, 2), optimizer="sgd")
    abstract, specs, shardings, _ = trainer.layout(example)
    text = trainer.partitioner.describe(abstract.params, shardings.params, specs.params)
    lines = text.splitlines()
    params = jax.tree_util.tree_flatten_with_path(abstract.params)[0]
    assert len(lines) == len(params) + 1
    for (path, leaf), line in zip(params, lines):
        name = jax.tree_util.keystr(path)
        assert line.startswith(name), (name, line)
        assert str(tuple(leaf.shape)) in line, line
        spec = _expected_param_spec(name, dict(trainer.partitioner.mesh.shape), kv_heads=4)
        assert f"mesh={tuple(spec)}" in line, line
    total = sum(math.prod(leaf.shape) for _, leaf in params)
    assert total == 106_816  # decoder-tiny: 2 layers, emb 64, mlp 128, vocab 256, 8/4 heads of 8
    assert re.search(rf"total parameters: {total:,}\b", lines[-1]), lines[-1]
