"""QCRD's train state and step (`qcrd/`): the lagged ring, the online discriminator, the
self-adversarial sampler, and the same steps on 8 simulated devices as on one."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from t5x_rationale.architectures import build_model, get_preset
from t5x_rationale.architectures.discriminator import Discriminator
from t5x_rationale.inference.decoding import DecodeConfig, decode
from t5x_rationale.objectives.discriminator import discriminator_loss
from t5x_rationale.objectives.qcrd import merge_qcrd_batches, qcrd_loss, split_qcrd_batch
from t5x_rationale.qcrd.negatives import SAMPLE_TAG, SelfAdversarialNegatives
from t5x_rationale.qcrd.settings import QcrdSettings
from t5x_rationale.qcrd.trainer import QcrdTrainer
from t5x_rationale.runtime.optimizers import OptimizerConfig, make_optimizer
from t5x_rationale.runtime.partitioning import MeshConfig, Partitioner, create_mesh

B, LIN, LC, LT = 8, 6, 7, 3
LAG, D_EVERY, D_LR = 3, 2, 1e-2


def _tiny(**fields):
    return dataclasses.replace(get_preset("t5-tiny"), dropout_rate=0.0, **fields)


def _settings(**overrides):
    fields = dict(
        candidate_task="unused",
        candidate_lengths={"inputs": LIN, "positives": LC, "negatives": LC, "targets": LT},
        num_positives=2,
        num_negatives=1,
        lag=LAG,
        sample_every=2,
        num_samples=2,
        discriminator_every=D_EVERY,
        discriminator_learning_rate=D_LR,
        discriminator=Discriminator(_tiny(num_encoder_layers=1), hidden_dim=16),
    )
    return QcrdSettings(**{**fields, **overrides})


def _batch(seed: int) -> dict:
    """A merged label + candidate host batch: 2 positives, 1 negative, labels."""
    rng = np.random.default_rng(seed)
    k = 3
    lengths = rng.integers(2, LC + 1, (B, k))
    targets = rng.integers(3, 256, (B, k, LC)) * (np.arange(LC) < lengths[..., None])
    label_targets = rng.integers(3, 256, (B, LT)) * (
        np.arange(LT) < rng.integers(1, LT + 1, (B, 1))
    )
    label = {
        "encoder_input_tokens": rng.integers(3, 256, (B, LIN)),
        "decoder_target_tokens": label_targets,
        "decoder_input_tokens": np.pad(label_targets[:, :-1], ((0, 0), (1, 0))),
        "decoder_loss_weights": (label_targets > 0).astype(np.float32),
    }
    candidates = {
        "encoder_input_tokens": rng.integers(3, 256, (B, LIN)),
        "candidate_target_tokens": targets,
        "candidate_input_tokens": np.pad(targets[..., :-1], ((0, 0), (0, 0), (1, 0))),
        "candidate_loss_weights": (targets > 0).astype(np.float32),
        "candidate_mask": np.ones((B, k), np.int32),
        "candidate_is_positive": np.broadcast_to([1, 1, 0], (B, k)).astype(np.int32),
        "candidate_label_tokens": label_targets,
    }
    cast = lambda d: {  # noqa: E731
        n: v.astype(np.float32 if v.dtype == np.float64 else np.int32) for n, v in d.items()
    }
    return merge_qcrd_batches(cast(label), cast(candidates))


def _trainer(mesh=(1, 1, 1), sgd=False, **overrides) -> QcrdTrainer:
    """A QCRD trainer; `sgd`: plain SGD for student and D, so that params can be compared
    across meshes (Adam's first steps are sign-like where a gradient is near 0, and magnify
    reduction-order differences there)."""
    n = int(np.prod(mesh))
    partitioner = Partitioner(create_mesh(MeshConfig(*mesh), jax.devices()[:n]))
    name = "sgd" if sgd else "adamw"
    tx, schedule = make_optimizer(OptimizerConfig(name=name, learning_rate=1e-2))
    model = build_model(_tiny(num_encoder_layers=1, num_decoder_layers=1))
    trainer = QcrdTrainer(
        model,
        qcrd_loss,
        tx,
        partitioner,
        learning_rate_fn=schedule,
        settings=_settings(**overrides),
    )
    if sgd:
        trainer.discriminator_optimizer = optax.sgd(D_LR)
    return trainer


def _every_other_row_disagrees(sample, label):
    return None if not sample.any() else bool(sample[0] % 2)


def _run(trainer, steps, *, record=False):
    """(final state, per-step metrics, params before each step) over the seeded batches."""
    negatives = SelfAdversarialNegatives(trainer, _every_other_row_disagrees)
    example = negatives(None, _batch(0))
    state = trainer.init_state(0, trainer.partitioner.host_batch_to_global(example))
    history, metrics = [], []
    for step in range(steps):
        if record:
            history.append((jax.device_get(state.params), jax.device_get(state.ring)))
        host = negatives(state, _batch(step))
        state, m = trainer.train_step(state, trainer.partitioner.host_batch_to_global(host))
        metrics.append({k: float(v) for k, v in jax.device_get(m).items()})
    return state, metrics, history


@pytest.fixture(scope="module")
def one_device():
    trainer = _trainer(sgd=True)
    state, metrics, history = _run(trainer, 7, record=True)
    return trainer, state, metrics, history


def _equal_trees(a, b):
    return all(
        np.array_equal(np.asarray(x), np.asarray(y))
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))
    )


def test_ring_holds_the_params_of_lag_steps_earlier(one_device):
    trainer, state, _, history = one_device
    params = [p for p, _ in history] + [jax.device_get(state.params)]
    for step in range(len(history)):
        ring = history[step][1]
        lagged = jax.tree.map(lambda r, s=step: r[s % LAG], ring)
        assert _equal_trees(lagged, params[max(step - LAG, 0)]), step
    # after the last step, every slot holds one of the last LAG students, slot = step mod LAG
    final_ring = jax.device_get(state.ring)
    for step in range(len(history) - LAG, len(history)):
        assert _equal_trees(jax.tree.map(lambda r, s=step: r[s % LAG], final_ring), params[step])
    assert _equal_trees(jax.device_get(trainer.lagged_params(state)), params[len(history) - LAG])
    assert not _equal_trees(params[0], params[-1])


@pytest.fixture(scope="module")
def quiet_trainer():
    """A trainer that never samples (one compile shared by the tests below)."""
    return _trainer(sample_every=0)


def test_the_ring_does_not_change_the_student_step(quiet_trainer):
    trainer = quiet_trainer
    batch = trainer.partitioner.host_batch_to_global(
        SelfAdversarialNegatives(trainer, _every_other_row_disagrees)(None, _batch(0))
    )
    state = trainer.init_state(0, batch)
    garbage = state.replace(ring=jax.tree.map(lambda r: jnp.full_like(r, 7.0), state.ring))
    copy = jax.tree.map(jnp.copy, state)
    a, ma = trainer.train_step(copy, batch)
    b, mb = trainer.train_step(garbage, batch)
    assert _equal_trees(a.params, b.params) and float(ma["loss"]) == float(mb["loss"])


def test_discriminator_updates_every_m_steps_after_the_loss_read_it(quiet_trainer):
    trainer = quiet_trainer
    negatives = SelfAdversarialNegatives(trainer, _every_other_row_disagrees)
    host = negatives(None, _batch(0))
    batch = trainer.partitioner.host_batch_to_global(host)
    state = trainer.init_state(0, batch)
    d0 = jax.device_get(state.discriminator_params)
    params0 = jax.device_get(state.params)
    rng0 = jax.random.fold_in(state.rng, 0)
    d_rng = jax.random.fold_in(rng0, 0xD15C)
    candidates = split_qcrd_batch(host)[1]
    disc = trainer.discriminator
    grads = jax.jit(jax.grad(lambda p: discriminator_loss(disc, p, candidates, d_rng)[0]))(d0)
    # Adam's first step from zero moments: -lr * g / (|g| + eps), bias corrections cancel
    want_d1 = jax.tree.map(lambda p, g: p - D_LR * g / (np.abs(g) + 1e-8), d0, grads)
    want_loss, _ = jax.jit(
        lambda p, b, d: qcrd_loss(
            trainer.model, p, b, rng0, constants={"discriminator": d}, discriminator=disc
        )
    )(params0, host, d0)
    state, m = trainer.train_step(state, batch)  # step 0: D updates (0 mod M)
    assert float(m["loss"]) == pytest.approx(float(want_loss), rel=1e-5)
    got = jax.device_get(state.discriminator_params)
    for x, y, g, p in zip(*(jax.tree.leaves(t) for t in (got, want_d1, grads, d0))):
        # where |g| is near eps the sign-like step is ill-conditioned: only bounded there
        sure = np.abs(g) > 1e-5
        np.testing.assert_allclose(x[sure], y[sure], rtol=1e-5, atol=1e-6)
        assert np.all(np.abs(x - p) <= D_LR * (1 + 1e-5))
    assert float(m["discriminator/updated"]) == 1.0 and int(state.discriminator_steps) == 1
    state, m = trainer.train_step(state, batch)  # step 1: no D update
    assert _equal_trees(jax.device_get(state.discriminator_params), got)
    assert float(m["discriminator/updated"]) == 0.0 and int(state.discriminator_steps) == 1


def test_samples_come_from_the_lagged_params_and_repeat_per_seed(one_device):
    trainer, state, _, history = one_device
    negatives = SelfAdversarialNegatives(trainer, _every_other_row_disagrees)
    questions = _batch(9)["candidate_encoder_input_tokens"]
    first = negatives.sample(state, questions, LC)
    assert np.array_equal(first, negatives.sample(state, questions, LC))
    step = int(state.step)
    lagged = history[step - LAG][0]
    config = DecodeConfig(max_decode_length=LC, method="sample", temperature=1.5)
    rng = jax.random.fold_in(jax.random.fold_in(state.rng, step), SAMPLE_TAG)
    want = decode(
        trainer.model,
        lagged,
        {"encoder_input_tokens": np.repeat(questions, 2, axis=0)},
        config,
        rng=rng,
    ).tokens
    assert np.array_equal(first, np.asarray(want).reshape(B, 2, LC))
    other = state.replace(rng=jax.random.PRNGKey(123))
    assert not np.array_equal(first, negatives.sample(other, questions, LC))


def test_prepare_appends_only_disagreeing_samples_on_sampling_steps(one_device):
    trainer, state, _, _ = one_device
    negatives = SelfAdversarialNegatives(trainer, _every_other_row_disagrees)
    host = _batch(3)
    quiet = negatives(state.replace(step=jnp.asarray(1, jnp.int32)), host)
    assert quiet["candidate_target_tokens"].shape == (B, 5, LC)
    assert (
        not quiet["candidate_mask"][:, 3:].any()
        and not quiet["candidate_target_tokens"][:, 3:].any()
    )
    loud = negatives(state.replace(step=jnp.asarray(4, jnp.int32)), host)
    samples = negatives.sample(
        state.replace(step=jnp.asarray(4, jnp.int32)), host["candidate_encoder_input_tokens"], LC
    )
    keep = np.array([[_every_other_row_disagrees(s, None) is True for s in row] for row in samples])
    np.testing.assert_array_equal(loud["candidate_mask"][:, 3:], keep.astype(np.int32))
    np.testing.assert_array_equal(loud["candidate_target_tokens"][:, 3:], samples * keep[..., None])
    assert not loud["candidate_is_positive"][:, 3:].any()
    np.testing.assert_array_equal(loud["candidate_mask"][:, :3], host["candidate_mask"])
    assert negatives.counts["sampled"] == B * 2  # counted when read, not when drawn


@pytest.mark.parametrize("mesh", [(2, 4, 1), (2, 2, 2)])  # data x fsdp, and x tensor
def test_qcrd_steps_on_8_devices_match_one_device(one_device, mesh):
    _, state1, metrics1, _ = one_device
    state8, metrics8, _ = _run(_trainer(mesh, sgd=True), 7)
    for got, want in zip(metrics8, metrics1):
        assert got["loss"] == pytest.approx(want["loss"], rel=2e-5, abs=1e-6)
        assert got["discriminator/loss"] == pytest.approx(
            want["discriminator/loss"], rel=2e-5, abs=1e-6
        )
    for name in ("params", "ring", "discriminator_params", "discriminator_opt_state"):
        a = jax.tree.leaves(jax.device_get(getattr(state8, name)))
        b = jax.tree.leaves(jax.device_get(getattr(state1, name)))
        for x, y in zip(a, b):
            np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6, err_msg=name)


def test_decoder_only_student_trains_and_samples_after_its_question():
    partitioner = Partitioner(create_mesh(MeshConfig(1, 1, 1), jax.devices()[:1]))
    tx, _ = make_optimizer(OptimizerConfig(name="sgd", learning_rate=1e-2))
    model = build_model(dataclasses.replace(get_preset("decoder-tiny"), num_layers=1))
    trainer = QcrdTrainer(model, qcrd_loss, tx, partitioner, settings=_settings(lag=2))
    negatives = SelfAdversarialNegatives(trainer, _every_other_row_disagrees)

    def decoder_batch(seed):
        batch = _batch(seed)
        del batch["encoder_input_tokens"]  # the label row is a prefix-LM row
        return batch

    host = negatives(None, decoder_batch(0))
    state = trainer.init_state(0, partitioner.host_batch_to_global(host))
    initial = jax.device_get(state.params)
    for step in range(3):
        host = negatives(state, decoder_batch(step))
        if step == 2:  # a sampling step: the lagged params are the initial ones (lag 2)
            rng = jax.random.fold_in(jax.random.fold_in(state.rng, 2), SAMPLE_TAG)
            config = DecodeConfig(max_decode_length=LC, method="sample", temperature=1.5)
            prompts = np.repeat(host["candidate_encoder_input_tokens"], 2, axis=0)
            want = decode(model, initial, {"decoder_prompt_tokens": prompts}, config, rng=rng)
            keep = host["candidate_mask"][:, 3:, None]
            np.testing.assert_array_equal(
                host["candidate_target_tokens"][:, 3:],
                np.asarray(want.tokens).reshape(B, 2, LC) * keep,
            )
        state, metrics = trainer.train_step(state, partitioner.host_batch_to_global(host))
        assert np.isfinite(float(metrics["loss"])) and float(metrics["positive_term"]) > 0
    assert not _equal_trees(jax.device_get(state.params), initial)
