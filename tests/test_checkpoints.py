"""Checkpoints (t5x_rationale/runtime/checkpoints.py) and the checkpointing parts of the training
loop.

One decoder-tiny Trainer on a 2x2x2 mesh is built, trained and saved once per module (its
train step compiles once); every other test restores from those checkpoints, writes small
ones of its own, or reuses the compiled step through `train_loop`.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import types

import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from t5x_rationale.architectures import build_model, dummy_batch, get_preset
from t5x_rationale.benchmarks.random_batches import RandomBatches
from t5x_rationale.objectives import token_loss
from t5x_rationale.runtime.checkpoints import Checkpointer, CheckpointMismatchError
from t5x_rationale.runtime.optimizers import OptimizerConfig, make_optimizer
from t5x_rationale.runtime.partitioning import MeshConfig, Partitioner, create_mesh
from t5x_rationale.runtime.trainer import Trainer
from t5x_rationale.runtime.training_loop import Preempted, train_loop

BATCH, LENGTH, VOCAB = 8, 8, 256
SAVE_MESH = MeshConfig(2, 2, 2)
# Example batch: fixes the shapes of the state (its values are never used).
EXAMPLE = next(RandomBatches(vocab_size=VOCAB, batch_size=BATCH, target_length=LENGTH))


def make_trainer(mesh, preset: str = "decoder-tiny", **overrides) -> Trainer:
    config = get_preset(preset, **overrides)
    tx, schedule = make_optimizer(OptimizerConfig(name="adamw", learning_rate=1e-2))
    return Trainer(
        build_model(config), token_loss, tx, Partitioner(mesh), learning_rate_fn=schedule
    )


def make_data(position: int = 0) -> RandomBatches:
    return RandomBatches(
        vocab_size=VOCAB, batch_size=BATCH, target_length=LENGTH, seed=1, position=position
    )


def no_init():
    pytest.fail("init_fn must not be called when a checkpoint is restored")


def leaves_with_paths(tree):
    return [(jax.tree_util.keystr(p), x) for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]]


def assert_bitwise_equal(actual, expected):
    """Same tree structure, and every leaf has the same shape, dtype and bytes."""
    a, e = leaves_with_paths(actual), leaves_with_paths(expected)
    assert [p for p, _ in a] == [p for p, _ in e]
    for (path, x), (_, y) in zip(a, e):
        x, y = np.asarray(jax.device_get(x)), np.asarray(jax.device_get(y))
        assert (x.shape, x.dtype) == (y.shape, y.dtype), path
        assert x.tobytes() == y.tobytes(), f"{path} differs"


def assert_not_equal(a, b):
    assert any(
        np.asarray(x).tobytes() != np.asarray(y).tobytes()
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))
    )


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A 2-step state saved in run_a (step 2) and its 3-step successor saved in run_b (step 3)."""
    root = tmp_path_factory.mktemp("checkpoints")
    trainer = make_trainer(create_mesh(SAVE_MESH))
    partitioner = trainer.partitioner
    state = trainer.init_state(0, EXAMPLE)
    initial = jax.device_get(state)
    data = make_data()
    losses = {}
    for step in (1, 2):
        state, metrics = trainer.train_step(state, partitioner.host_batch_to_global(next(data)))
        losses[step] = float(metrics["loss"])
    host2, data2 = jax.device_get(state), data.get_state()
    run_a = root / "run_a"
    checkpointer = Checkpointer(str(run_a), save_every=1)
    assert checkpointer.save(2, state, data2)
    checkpointer.wait()
    checkpointer.close()

    state, _ = trainer.train_step(state, partitioner.host_batch_to_global(next(data)))
    host3, data3 = jax.device_get(state), data.get_state()
    run_b = root / "run_b"
    checkpointer = Checkpointer(str(run_b), save_every=1)
    assert checkpointer.save(3, state, data3)
    checkpointer.wait()
    checkpointer.close()
    return types.SimpleNamespace(
        root=root,
        trainer=trainer,
        initial=initial,
        host2=host2,
        host3=host3,
        data2=data2,
        data3=data3,
        run_a=run_a,
        run_b=run_b,
        losses=losses,
    )


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


# ====================================================================== (f) the training loop


def _fresh_state(saved):
    """The step-0 state on the save mesh, without compiling init again."""
    _, _, shardings, _ = saved.trainer.layout(EXAMPLE)
    return jax.device_put(saved.initial, shardings)


def _recorder(losses: dict, sigterm_at=None):
    def on_metrics(step, metrics):
        losses[step] = metrics["loss"]
        if step == sigterm_at:
            signal.raise_signal(signal.SIGTERM)

    return on_metrics


@pytest.fixture
def sigterm_guard():
    """Catches SIGTERM if the loop fails to install its own handler (instead of killing pytest)."""
    caught = []
    guard = lambda *_: caught.append(1)  # noqa: E731
    previous = signal.signal(signal.SIGTERM, guard)
    yield guard, caught
    signal.signal(signal.SIGTERM, previous)


def test_train_loop_preemption_and_resume(saved, tmp_path, sigterm_guard):
    trainer, num_steps = saved.trainer, 4

    # Uninterrupted run; save_every=3 so the final step 4 is only saved because it is last.
    full_losses = {}
    full_run = tmp_path / "full"
    checkpointer = Checkpointer(str(full_run), save_every=3, keep=None)
    final = train_loop(
        trainer,
        _fresh_state(saved),
        make_data(),
        num_steps=num_steps,
        checkpointer=checkpointer,
        on_metrics=_recorder(full_losses),
    )
    final_host = jax.device_get(final)
    assert sorted(full_losses) == [1, 2, 3, 4]
    assert full_losses[1] == saved.losses[1] and full_losses[2] == saved.losses[2]
    assert int(final_host.step) == num_steps
    assert checkpointer.latest_step == 4
    assert {3, 4} <= set(checkpointer.all_steps()) and 2 not in checkpointer.all_steps()
    restored, data_state = checkpointer.restore(4, trainer.abstract_state(EXAMPLE))
    assert data_state == {"position": 4, "seed": 1}
    assert_bitwise_equal(restored, final_host)
    # Step 3 was saved asynchronously and its state then donated to step 4: the checkpoint
    # must still hold the step-3 state (the fixture computed the same 3 steps by hand).
    restored, data_state = checkpointer.restore(3, trainer.abstract_state(EXAMPLE))
    assert data_state == saved.data3
    assert_bitwise_equal(restored, saved.host3)
    checkpointer.close()

    # Interrupted run: SIGTERM during step 2 saves step 2 and raises Preempted.
    guard, caught = sigterm_guard
    run = tmp_path / "preempted"
    losses = {}
    checkpointer = Checkpointer(str(run), save_every=100, keep=None)
    with pytest.raises(Preempted, match="step 2"):
        train_loop(
            trainer,
            _fresh_state(saved),
            make_data(),
            num_steps=num_steps,
            checkpointer=checkpointer,
            on_metrics=_recorder(losses, sigterm_at=2),
        )
    assert caught == [], "SIGTERM reached the previous handler: the loop did not catch it"
    assert signal.getsignal(signal.SIGTERM) is guard, (
        "the loop must restore the previous SIGTERM handler"
    )
    assert sorted(losses) == [1, 2]
    assert checkpointer.latest_step == 2
    assert not {3, 4} & set(checkpointer.all_steps())
    checkpointer.close()

    # Restart from the run directory and finish.
    checkpointer = Checkpointer(str(run), save_every=100, keep=None)
    state, data_state, source = checkpointer.restore_or_init(
        trainer.abstract_state(EXAMPLE), no_init
    )
    assert source == f"{run}/2" and data_state == {"position": 2, "seed": 1}
    assert int(state.step) == 2
    data = make_data()
    data.set_state(data_state)
    resumed_losses = {}
    resumed = train_loop(
        trainer,
        state,
        data,
        num_steps=num_steps,
        checkpointer=checkpointer,
        on_metrics=_recorder(resumed_losses),
    )
    assert sorted(resumed_losses) == [3, 4]
    for step in (1, 2):
        assert losses[step] == full_losses[step], step
    for step in (3, 4):
        assert resumed_losses[step] == full_losses[step], (
            step,
            resumed_losses[step],
            full_losses[step],
        )
    assert_bitwise_equal(resumed, final_host)
    assert checkpointer.latest_step == 4
    checkpointer.close()


def test_train_loop_without_work_still_waits_and_returns(saved, tmp_path):
    """A run restored at num_steps does no steps and writes nothing."""
    run = tmp_path / "done"
    checkpointer = Checkpointer(str(run), save_every=1)
    state = _fresh_state(saved)
    out = train_loop(saved.trainer, state, make_data(), num_steps=0, checkpointer=checkpointer)
    assert out is state
    assert checkpointer.all_steps() == []
    checkpointer.close()


def test_train_loop_sigterm_without_checkpointer_stops(saved, sigterm_guard):
    guard, caught = sigterm_guard
    losses = {}
    try:
        train_loop(
            saved.trainer,
            _fresh_state(saved),
            make_data(),
            num_steps=3,
            on_metrics=_recorder(losses, sigterm_at=1),
        )
    except Preempted:
        pass
    assert caught == []
    assert signal.getsignal(signal.SIGTERM) is guard
    assert sorted(losses) == [1], f"SIGTERM at step 1 was ignored; steps run: {sorted(losses)}"
