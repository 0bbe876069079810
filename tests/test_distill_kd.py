"""Teacher-logit KD against a hand-computed KL, and the teacher as sharded step constants."""

import jax
import numpy as np
import optax
import pytest
from random_params import random_params

from t5x_rationale.architectures import build_model, get_preset
from t5x_rationale.objectives import kd_loss
from t5x_rationale.runtime.partitioning import MeshConfig, Partitioner, create_mesh
from t5x_rationale.runtime.trainer import Trainer, abstract_params

STUDENT = get_preset("t5-tiny")
TEACHER = get_preset("t5-tiny", emb_dim=96, mlp_dim=160, num_decoder_layers=3)


def _batch(seed=0, b=8, s=10, t=12):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(4, t + 1, b)
    mask = np.arange(t)[None] < lengths[:, None]
    targets = rng.integers(3, 256, (b, t)).astype(np.int32) * mask
    return {
        "encoder_input_tokens": rng.integers(3, 256, (b, s)).astype(np.int32),
        "decoder_target_tokens": targets.astype(np.int32),
        "decoder_input_tokens": np.pad(targets[:, :-1], ((0, 0), (1, 0))).astype(np.int32),
        "decoder_loss_weights": mask.astype(np.float32),
    }


def _params(model, batch, seed):
    return random_params(
        model,
        seed=seed,
        encoder_input_tokens=batch["encoder_input_tokens"],
        decoder_input_tokens=batch["decoder_input_tokens"],
    )


def _reference(student_logits, teacher_logits, batch, lam, temperature, t_squared, z_loss):
    """Token by token, float64: softmaxes, KL sums and log-likelihoods written out."""
    s, t = np.asarray(student_logits, np.float64), np.asarray(teacher_logits, np.float64)
    ce_sum = kl_sum = count = 0.0
    for r in range(s.shape[0]):
        for i in range(s.shape[1]):
            if not batch["decoder_loss_weights"][r, i]:
                continue
            p_s = np.exp(s[r, i] / temperature) / np.exp(s[r, i] / temperature).sum()
            p_t = np.exp(t[r, i] / temperature) / np.exp(t[r, i] / temperature).sum()
            kl_sum += sum(pt * (np.log(pt) - np.log(ps)) for pt, ps in zip(p_t, p_s))
            log_z = np.log(np.exp(s[r, i]).sum())
            ce_sum += log_z - s[r, i, batch["decoder_target_tokens"][r, i]] + z_loss * log_z**2
            count += 1
    scale = temperature**2 if t_squared else 1.0
    return (1 - lam) * ce_sum / count + lam * scale * kl_sum / count, kl_sum / count


@pytest.mark.parametrize(
    "lam,temperature,t_squared", [(0.3, 2.0, False), (0.3, 2.0, True), (0.7, 1.0, False)]
)
def test_kd_loss_matches_hand_computed_kl(lam, temperature, t_squared):
    batch = _batch()
    student, teacher = build_model(STUDENT), build_model(TEACHER)
    s_params, t_params = _params(student, batch, 0), _params(teacher, batch, 1)
    loss, metrics = kd_loss(
        student,
        s_params,
        batch,
        None,
        constants={"teacher": t_params},
        teacher_model=teacher,
        lam=lam,
        temperature=temperature,
        t_squared=t_squared,
        z_loss=1e-4,
    )
    apply = lambda m, p: m.apply(  # noqa: E731
        {"params": p}, batch["encoder_input_tokens"], batch["decoder_input_tokens"]
    )
    expected, kl = _reference(
        apply(student, s_params), apply(teacher, t_params), batch, lam, temperature, t_squared, 1e-4
    )
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
    np.testing.assert_allclose(float(metrics["kl"]), kl, rtol=1e-5)
    assert kl > 0.01


def test_kd_gradient_does_not_reach_the_teacher():
    batch = _batch()
    student, teacher = build_model(STUDENT), build_model(TEACHER)
    s_params, t_params = _params(student, batch, 0), _params(teacher, batch, 1)
    grads = jax.grad(
        lambda t: kd_loss(
            student, s_params, batch, None, constants={"teacher": t}, teacher_model=teacher
        )[0]
    )(t_params)
    assert all(float(np.abs(g).max()) == 0.0 for g in jax.tree.leaves(grads))


def test_teacher_with_other_vocab_is_refused():
    batch = _batch()
    student, teacher = build_model(STUDENT), build_model(get_preset("t5-tiny", vocab_size=384))
    with pytest.raises(ValueError, match="vocabulary"):
        kd_loss(
            student,
            _params(student, batch, 0),
            batch,
            None,
            constants={"teacher": _params(teacher, batch, 1)},
            teacher_model=teacher,
        )


def _kd_steps(mesh_shape, devices=None):
    """Two SGD steps with the teacher sharded like a student on `mesh_shape`; losses and params."""
    batch = _batch(seed=3)
    partitioner = Partitioner(create_mesh(MeshConfig(*mesh_shape), devices))
    teacher = build_model(TEACHER)
    shardings = jax.tree.map(lambda a: a.sharding, abstract_params(teacher, partitioner, batch))
    t_params = jax.tree.map(jax.device_put, _params(teacher, batch, 1), shardings)
    objective = lambda *a, **k: kd_loss(*a, teacher_model=teacher, **k)  # noqa: E731
    trainer = Trainer(
        build_model(STUDENT),
        objective,
        optax.sgd(0.5),
        partitioner,
        constants={"teacher": t_params},
    )
    state = trainer.init_state(0, batch)
    losses = []
    for _ in range(2):
        state, metrics = trainer.train_step(state, partitioner.host_batch_to_global(batch))
        losses.append(float(metrics["loss"]))
    return losses, jax.tree.map(np.asarray, jax.device_get(state.params))


def test_kd_train_steps_sharded_match_one_device():
    losses_1, params_1 = _kd_steps((1, 1, 1), jax.devices()[:1])
    losses_8, params_8 = _kd_steps((2, 2, 2))
    assert losses_1[1] < losses_1[0]
    np.testing.assert_allclose(losses_8, losses_1, rtol=1e-5)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), params_8, params_1
    )
