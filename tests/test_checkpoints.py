"""Checkpoint save and restore: other meshes, restore order, other models, partial saves, keep-N."""

from __future__ import annotations

import json
import os
import shutil

import jax
import numpy as np
import pytest
from checkpoint_setup import (
    BATCH,
    EXAMPLE,
    LENGTH,
    VOCAB,
    assert_bitwise_equal,
    assert_not_equal,
    leaves_with_paths,
    make_trainer,
    no_init,
    saved_checkpoints,
)
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from t5x_rationale.architectures import dummy_batch, get_preset
from t5x_rationale.runtime.checkpoints import Checkpointer, CheckpointMismatchError
from t5x_rationale.runtime.partitioning import MeshConfig, create_mesh


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    return saved_checkpoints(tmp_path_factory)


def test_saved_state_is_nontrivial(saved):
    assert saved.data2 == {"position": 2, "seed": 1}
    assert int(saved.host2.step) == 2 and int(saved.host3.step) == 3
    counts = [int(x) for p, x in leaves_with_paths(saved.host2.opt_state) if p.endswith(".count")]
    assert counts and all(c == 2 for c in counts)
    assert_not_equal(saved.host2.params, saved.initial.params)
    assert_not_equal(saved.host3.params, saved.host2.params)
    assert sorted(os.listdir(saved.run_a)) == ["2"]


# ============================================================ (a) restore onto other meshes


@pytest.mark.parametrize(
    "mesh_config, num_devices",
    [
        (MeshConfig(1, 1, 1), 1),
        (MeshConfig(2, 1, 4), 8),
        (MeshConfig(1, 2, 4), 8),
        (MeshConfig(8, 1, 1), 8),
    ],
    ids=["1x1x1-on-1-device", "2x1x4", "1x2x4", "8x1x1"],
)
def test_restore_onto_other_mesh(saved, mesh_config, num_devices):
    devices = jax.devices()[:num_devices]
    mesh = create_mesh(mesh_config, devices)
    target = make_trainer(mesh).abstract_state(EXAMPLE)
    checkpointer = Checkpointer(str(saved.run_a))
    state, data_state, source = checkpointer.restore_or_init(target, no_init)
    checkpointer.close()

    assert source == f"{saved.run_a}/2"
    assert data_state == saved.data2
    assert_bitwise_equal(state, saved.host2)
    for (path, leaf), (_, want) in zip(leaves_with_paths(state), leaves_with_paths(target)):
        assert isinstance(leaf.sharding, NamedSharding), path
        assert leaf.sharding == want.sharding, path
        assert leaf.sharding.mesh == mesh, path
        assert leaf.sharding.device_set == set(devices), path
    # A param that the new mesh actually splits differently from the save mesh.
    embedding = state.params["token_embedder"]["embedding"]
    assert embedding.sharding.spec == P("tensor", "fsdp")
    tensor = dict(mesh.shape)["tensor"]
    assert {s.data.shape for s in embedding.addressable_shards} == {
        (VOCAB // tensor, 64 // dict(mesh.shape)["fsdp"])
    }


# =================================================================== (b) restore order


def test_latest_in_run_dir_wins_over_explicit_path(saved):
    target = saved.trainer.abstract_state(EXAMPLE)
    checkpointer = Checkpointer(str(saved.run_a))
    state, data_state, source = checkpointer.restore_or_init(
        target, no_init, explicit_path=f"{saved.run_b}/3"
    )
    assert source == f"{saved.run_a}/2"
    assert data_state == saved.data2
    assert_bitwise_equal(state, saved.host2)


def test_explicit_path_used_when_run_dir_empty(saved, tmp_path):
    target = saved.trainer.abstract_state(EXAMPLE)
    run = tmp_path / "new_run"
    checkpointer = Checkpointer(str(run))
    for explicit in (f"{saved.run_b}/3", f"{saved.run_b}/3/"):
        state, data_state, source = checkpointer.restore_or_init(
            target, no_init, explicit_path=explicit
        )
        assert source == explicit
        assert data_state == saved.data3
        assert_bitwise_equal(state, saved.host3)
        for leaf, want in zip(jax.tree.leaves(state), jax.tree.leaves(target)):
            assert leaf.sharding == want.sharding
    # Reading another run writes nothing into either run.
    assert checkpointer.all_steps() == [] and checkpointer.latest_step is None
    assert sorted(os.listdir(saved.run_b)) == ["3"]


def test_fresh_init_when_nothing_to_restore(saved, tmp_path):
    calls = []
    sentinel = object()

    def init_fn():
        calls.append(1)
        return sentinel

    checkpointer = Checkpointer(str(tmp_path / "run"))
    state, data_state, source = checkpointer.restore_or_init(
        saved.trainer.abstract_state(EXAMPLE), init_fn
    )
    assert state is sentinel and data_state == {} and source == "fresh init"
    assert calls == [1]


def test_explicit_path_errors(saved, tmp_path):
    target = saved.trainer.abstract_state(EXAMPLE)
    checkpointer = Checkpointer(str(tmp_path / "run"))
    for bad in (str(saved.run_b), f"{saved.run_b}/3/state", f"{saved.run_b}/step_3"):
        with pytest.raises(ValueError, match="must end in a step directory"):
            checkpointer.restore_or_init(target, no_init, explicit_path=bad)
    with pytest.raises(FileNotFoundError) as info:
        checkpointer.restore_or_init(target, no_init, explicit_path=f"{saved.run_b}/7")
    assert f"{saved.run_b}/7" in str(info.value) and "[3]" in str(info.value)
    with pytest.raises(FileNotFoundError):
        checkpointer.restore_or_init(target, no_init, explicit_path=str(tmp_path / "nowhere" / "5"))


# ============================================================== (c) another model's checkpoint


def test_other_architecture_raises_mismatch(saved, tmp_path):
    mesh = saved.trainer.partitioner.mesh
    t5 = make_trainer(mesh, "t5-tiny")
    t5_target = t5.abstract_state(
        dummy_batch(get_preset("t5-tiny"), BATCH, target_length=LENGTH, input_length=LENGTH)
    )
    t5_state = jax.tree.map(
        lambda a: jax.device_put(np.zeros(a.shape, a.dtype), a.sharding), t5_target
    )
    run = tmp_path / "t5_run"
    checkpointer = Checkpointer(str(run), save_every=1)
    assert checkpointer.save(1, t5_state, {"position": 1})
    checkpointer.wait()

    target = saved.trainer.abstract_state(EXAMPLE)
    with pytest.raises(CheckpointMismatchError) as info:
        checkpointer.restore_or_init(target, no_init)
    msg = str(info.value)
    assert isinstance(info.value, ValueError)
    assert f"{run}/1" in msg
    assert (
        ".params['decoder']['layers_0']['self_attention']['key']['kernel']: "
        "checkpoint has [[64, 8, 8], 'float32'], model expects [[64, 4, 8], 'float32']"
    ) in msg, msg
    assert "in checkpoint but not expected: .params['encoder']" in msg, msg

    # The same check guards restores from an explicit path.
    with pytest.raises(CheckpointMismatchError, match=r"model expects \[\[64, 4, 8\]"):
        Checkpointer(str(tmp_path / "other")).restore_or_init(
            target, no_init, explicit_path=f"{run}/1"
        )


def test_other_width_raises_mismatch(saved):
    narrow = make_trainer(saved.trainer.partitioner.mesh, emb_dim=32)
    target = narrow.abstract_state(EXAMPLE)
    checkpointer = Checkpointer(str(saved.run_a))
    with pytest.raises(CheckpointMismatchError) as info:
        checkpointer.restore_or_init(target, no_init)
    msg = str(info.value)
    assert (
        ".params['decoder']['decoder_norm']['scale']: checkpoint has [[64], 'float32'], "
        "model expects [[32], 'float32']" in msg
    ), msg
    assert (
        ".params['decoder']['layers_0']['mlp']['wi_0']['kernel']: "
        "checkpoint has [[64, 128], 'float32'], "
        "model expects [[32, 128], 'float32']" in msg
    ), msg
    # 21 params, each with an emb_dim axis, and their two Adam moments.
    assert "0 missing, 0 unexpected, 63 with other shape/dtype" in msg, msg


# ============================================================= (d) partially written saves


def _fake_interrupted_save(complete: str, tmp_dir: str) -> None:
    """What an interrupted local orbax save leaves: `<step>.orbax-checkpoint-tmp*`, holding
    step metadata without a commit timestamp, some items, and no commit_success.txt (orbax
    writes it just before the atomic rename to `<step>`)."""
    shutil.copytree(complete, tmp_dir)
    for marker in ("commit_success.txt", os.path.join("state", "commit_success.txt")):
        os.remove(os.path.join(tmp_dir, marker))
    meta_path = os.path.join(tmp_dir, "_CHECKPOINT_METADATA")
    with open(meta_path) as f:
        meta = json.load(f)
    assert "commit_timestamp_nsecs" in meta
    del meta["commit_timestamp_nsecs"]
    with open(meta_path, "w") as f:
        json.dump(meta, f)
    shutil.rmtree(os.path.join(tmp_dir, "signature"))


def test_partial_checkpoint_is_never_restored(saved, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(saved.run_a, run)
    complete = str(run / "2")
    assert os.path.exists(os.path.join(complete, "commit_success.txt"))
    assert os.path.exists(os.path.join(complete, "_CHECKPOINT_METADATA"))
    _fake_interrupted_save(complete, str(run / "3.orbax-checkpoint-tmp"))  # this orbax's naming
    # timestamped
    _fake_interrupted_save(complete, str(run / "4.orbax-checkpoint-tmp-1795316521571"))

    target = saved.trainer.abstract_state(EXAMPLE)
    checkpointer = Checkpointer(str(run), save_every=1)
    assert checkpointer.latest_step == 2
    assert checkpointer.all_steps() == [2]
    state, data_state, source = checkpointer.restore_or_init(target, no_init)
    assert source == f"{run}/2"
    assert data_state == saved.data2
    assert_bitwise_equal(state, saved.host2)

    # Nor through an explicit path.
    with pytest.raises(FileNotFoundError):
        Checkpointer(str(tmp_path / "other")).restore_or_init(
            target, no_init, explicit_path=f"{run}/3"
        )

    # The restarted run can write the interrupted step again.
    assert checkpointer.save(3, state, saved.data3)
    checkpointer.wait()
    assert checkpointer.all_steps() == [2, 3]
    restored, data_state = checkpointer.restore(3, target)
    assert data_state == saved.data3
    assert_bitwise_equal(restored, saved.host2)
    checkpointer.close()


# ================================================================ (e) keep-N and save_every


def _small_state(mesh, value: float) -> dict:
    return {
        "w": jax.device_put(
            np.full((8, 4), value, np.float32), NamedSharding(mesh, P("data", None))
        ),
        "count": jax.device_put(np.int32(value), NamedSharding(mesh, P())),
    }


def _small_target(mesh) -> dict:
    return {
        "w": jax.ShapeDtypeStruct(
            (8, 4), np.float32, sharding=NamedSharding(mesh, P(None, "tensor"))
        ),
        "count": jax.ShapeDtypeStruct((), np.int32, sharding=NamedSharding(mesh, P())),
    }


def test_keep_last_n(saved, tmp_path):
    mesh = saved.trainer.partitioner.mesh
    run = tmp_path / "run"
    checkpointer = Checkpointer(str(run), keep=2, save_every=1)
    for step in (1, 2, 3, 4):
        assert checkpointer.save(step, _small_state(mesh, step), {"position": step})
    checkpointer.wait()
    assert checkpointer.all_steps() == [3, 4]
    assert sorted(os.listdir(run)) == ["3", "4"]
    for step in (3, 4):
        state, data_state = checkpointer.restore(step, _small_target(mesh))
        assert data_state == {"position": step}
        np.testing.assert_array_equal(np.asarray(state["w"]), np.full((8, 4), step, np.float32))
        assert int(state["count"]) == step
        assert state["w"].sharding.spec == P(None, "tensor")
    checkpointer.close()


def test_save_every_unless_forced(saved, tmp_path):
    mesh = saved.trainer.partitioner.mesh
    checkpointer = Checkpointer(str(tmp_path / "run"), keep=None, save_every=2)
    decisions = {}
    for step, force in (
        (2, False),
        (3, False),
        (4, False),
        (5, False),
        (6, False),
        (7, True),
        (8, False),
    ):
        decisions[(step, force)] = checkpointer.save(step, _small_state(mesh, step), force=force)
        checkpointer.wait()
    assert decisions == {
        (2, False): True,
        (3, False): False,
        (4, False): True,
        (5, False): False,
        (6, False): True,
        (7, True): True,
        (8, False): True,
    }
    assert checkpointer.all_steps() == [2, 4, 6, 7, 8]
    checkpointer.close()


def test_first_save_respects_save_every(saved, tmp_path):
    checkpointer = Checkpointer(str(tmp_path / "run"), save_every=2)
    assert checkpointer.save(1, _small_state(saved.trainer.partitioner.mesh, 1)) is False
    checkpointer.wait()
    assert checkpointer.all_steps() == []
