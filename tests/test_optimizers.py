"""SGD, AdamW and Adafactor (runtime/optimizers.py) against numpy references; config checks."""

from __future__ import annotations

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from t5x_rationale.architectures import build_model, dummy_batch, get_preset, model_inputs
from t5x_rationale.runtime.optimizers import OptimizerConfig, make_optimizer


def _params(seed=0):
    """A kernel, an embedding-like table, a rank-3 kernel and a norm scale."""
    rng = np.random.default_rng(seed)
    return {
        "dense": {"kernel": rng.normal(size=(4, 6)).astype(np.float32)},
        "embed": {"embedding": rng.normal(size=(10, 4)).astype(np.float32)},
        "attn": {"kernel": rng.normal(size=(4, 2, 3)).astype(np.float32)},
        "norm": {"scale": rng.uniform(0.5, 1.5, size=(4,)).astype(np.float32)},
    }


def _grads_like(params, seed, scale=1.0):
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda p: (rng.normal(size=p.shape) * scale).astype(np.float32), params)


def _np(tree):
    return jax.tree.map(lambda x: np.asarray(x, np.float64), tree)


def _run(tx, params, grads_seq):
    """Init + len(grads_seq) updates, compiled as one function (eager dispatch is slow on CPU)."""

    @jax.jit
    def run(params, grads_seq):
        state = tx.init(params)
        for g in grads_seq:
            updates, state = tx.update(g, state, params)
            params = optax.apply_updates(params, updates)
        return params

    return run(params, list(grads_seq))


def _global_norm(tree):
    return math.sqrt(
        sum(float(np.sum(np.asarray(x, np.float64) ** 2)) for x in jax.tree.leaves(tree))
    )


def test_sgd_update_is_minus_lr_times_gradient_without_clipping():
    config = OptimizerConfig(name="sgd", learning_rate=0.3, clip_grad_norm=None)
    tx, _ = make_optimizer(config)
    params = _params()
    grads = _grads_like(params, 1)
    new = _run(tx, params, [grads])
    want = jax.tree.map(lambda p, g: p - 0.3 * g, _np(params), _np(grads))
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), _np(new), want
    )


@pytest.mark.parametrize("grad_scale", [0.01, 10.0])
def test_sgd_with_global_norm_clipping(grad_scale):
    clip = 1.0
    tx, _ = make_optimizer(OptimizerConfig(name="sgd", learning_rate=0.5, clip_grad_norm=clip))
    params = _params()
    grads = _grads_like(params, 2, scale=grad_scale)
    norm = _global_norm(grads)
    assert (norm < clip) == (grad_scale < 1)  # both regimes are exercised
    new = _run(tx, params, [grads])
    factor = min(1.0, clip / norm)
    want = jax.tree.map(lambda p, g: p - 0.5 * g * factor, _np(params), _np(grads))
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), _np(new), want
    )
    if grad_scale > 1:
        applied = _global_norm(jax.tree.map(lambda a, b: (a - b) / 0.5, _np(params), _np(new)))
        np.testing.assert_allclose(applied, clip, rtol=1e-5)


def test_sgd_follows_schedule():
    tx, schedule = make_optimizer(
        OptimizerConfig(
            name="sgd",
            learning_rate=1.0,
            schedule="linear",
            warmup_steps=2,
            total_steps=6,
            clip_grad_norm=None,
        )
    )
    params = {"w": jnp.zeros((3,), jnp.float32)}
    grads = {"w": jnp.ones((3,), jnp.float32)}
    new = _run(tx, params, [grads] * 5)
    # lr at steps 0..4: 0, 0.5, 1, 0.75, 0.5 -> total 2.75
    assert [float(schedule(s)) for s in range(5)] == pytest.approx(
        [0.0, 0.5, 1.0, 0.75, 0.5], abs=1e-7
    )
    np.testing.assert_allclose(np.asarray(new["w"]), -2.75, rtol=1e-6)


def np_adamw(params, grads_seq, *, lrs, b1, b2, eps, wd, decay):
    """Adam with bias correction and decoupled weight decay lr * wd * p on `decay` leaves."""
    params = {k: np.asarray(v, np.float64) for k, v in params.items()}
    m = {k: np.zeros_like(v) for k, v in params.items()}
    v = {k: np.zeros_like(v) for k, v in params.items()}
    for t, grads in enumerate(grads_seq, start=1):
        for k in params:
            g = np.asarray(grads[k], np.float64)
            m[k] = b1 * m[k] + (1 - b1) * g
            v[k] = b2 * v[k] + (1 - b2) * g * g
            m_hat = m[k] / (1 - b1**t)
            v_hat = v[k] / (1 - b2**t)
            step = m_hat / (np.sqrt(v_hat) + eps)
            if decay[k]:
                step = step + wd * params[k]
            params[k] = params[k] - lrs[t - 1] * step
    return params


def _flat(tree):
    return {
        jax.tree_util.keystr(path): leaf
        for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
    }


def test_adamw_matches_reference_over_several_steps():
    config = OptimizerConfig(
        name="adamw",
        learning_rate=0.01,
        schedule="linear",
        warmup_steps=1,
        total_steps=10,
        weight_decay=0.1,
        b1=0.8,
        b2=0.95,
        eps=1e-6,
        clip_grad_norm=None,
    )
    tx, schedule = make_optimizer(config)
    params = _params(3)
    grads_seq = [_grads_like(params, 10 + i) for i in range(4)]
    new = _run(tx, params, grads_seq)
    flat_params = _flat(params)
    want = np_adamw(
        flat_params,
        [_flat(g) for g in grads_seq],
        lrs=[float(schedule(s)) for s in range(4)],
        b1=0.8,
        b2=0.95,
        eps=1e-6,
        wd=0.1,
        decay={k: not k.endswith("['scale']") for k in flat_params},
    )
    got = _flat(new)
    for k in want:
        np.testing.assert_allclose(np.asarray(got[k]), want[k], rtol=1e-5, atol=1e-7, err_msg=k)


def test_adamw_weight_decay_applies_to_kernels_and_embeddings_only():
    """Zero gradients: Adam's step is 0, so only decoupled decay moves the params."""
    lr, wd = 0.1, 0.5
    tx, _ = make_optimizer(OptimizerConfig(name="adamw", learning_rate=lr, weight_decay=wd))
    params = _params(4)
    zeros = jax.tree.map(np.zeros_like, params)
    new = _run(tx, params, [zeros])
    np.testing.assert_array_equal(
        np.asarray(new["norm"]["scale"]), np.asarray(params["norm"]["scale"])
    )
    for path in (("dense", "kernel"), ("attn", "kernel")):
        old_leaf, new_leaf = params[path[0]][path[1]], new[path[0]][path[1]]
        np.testing.assert_allclose(
            np.asarray(new_leaf), np.asarray(old_leaf) * (1 - lr * wd), rtol=1e-6
        )
    np.testing.assert_allclose(
        np.asarray(new["embed"]["embedding"]),
        np.asarray(params["embed"]["embedding"]) * (1 - lr * wd),
        rtol=1e-6,
    )


@functools.lru_cache(maxsize=None)
def _model_params(preset, scan_layers=False):
    config = get_preset(preset, scan_layers=scan_layers, num_layers=1)
    model = build_model(config)
    batch = dummy_batch(config, 1, target_length=4, input_length=4)
    abstract = jax.eval_shape(
        lambda: nn.unbox(model.init(jax.random.PRNGKey(0), **model_inputs(batch))["params"])
    )
    rng = np.random.default_rng(0)
    return jax.tree.map(lambda a: rng.uniform(0.5, 1.5, a.shape).astype(a.dtype), abstract)


def _norm_scales_unchanged_under_decay(params, name):
    tx, _ = make_optimizer(OptimizerConfig(name=name, learning_rate=0.1, weight_decay=0.5))
    new = _run(tx, params, [jax.tree.map(np.zeros_like, params)])
    scales = {k: v for k, v in _flat(params).items() if "norm" in k}
    assert scales
    new_flat = _flat(new)
    changed = [
        k for k, v in scales.items() if not np.array_equal(np.asarray(new_flat[k]), np.asarray(v))
    ]
    kernels_changed = [
        k
        for k, v in _flat(params).items()
        if "kernel" in k and not np.array_equal(np.asarray(new_flat[k]), np.asarray(v))
    ]
    return changed, kernels_changed


@pytest.mark.parametrize("name", ["adamw", "adafactor"])
def test_model_norm_scales_are_not_decayed(name):
    params = _model_params("decoder-tiny")
    changed, kernels_changed = _norm_scales_unchanged_under_decay(params, name)
    assert changed == []
    assert len(kernels_changed) == len([k for k in _flat(params) if "kernel" in k])


@pytest.mark.parametrize("name", ["adamw", "adafactor"])
def test_scanned_model_norm_scales_are_not_decayed(name):
    params = _model_params("decoder-tiny", scan_layers=True)
    assert _flat(params)["['decoder']['layers']['pre_mlp_layer_norm']['scale']"].shape == (1, 64)
    changed, _ = _norm_scales_unchanged_under_decay(params, name)
    assert changed == []


def np_adafactor(
    params, grads_seq, *, lrs, wd, decay, min_dim=128, decay_exponent=0.8, eps=1e-30, min_scale=1e-3
):
    """Adafactor (Shazeer & Stern 2018) as configured here: factored second moments for leaves
    whose two largest dims are >= 128, beta2_t = 1 - t^-0.8, no update clipping, no momentum,
    step scaled by lr * max(rms(param), 1e-3), plus (unscaled) weight decay wd * param on
    `decay` leaves."""
    params = {k: np.asarray(v, np.float64) for k, v in params.items()}
    stats = {}
    for t, grads in enumerate(grads_seq, start=1):
        beta2 = 1.0 - t**-decay_exponent
        for k in params:
            p, g = params[k], np.asarray(grads[k], np.float64)
            g2 = g * g + eps
            factored = p.ndim == 2 and min(p.shape) >= min_dim
            if factored:
                row, col = stats.get(k, (np.zeros(p.shape[0]), np.zeros(p.shape[1])))
                row = beta2 * row + (1 - beta2) * g2.mean(axis=1)
                col = beta2 * col + (1 - beta2) * g2.mean(axis=0)
                stats[k] = (row, col)
                v_hat = np.outer(row, col) / row.mean()
            else:
                v = stats.get(k, np.zeros_like(p))
                v = beta2 * v + (1 - beta2) * g2
                stats[k] = v
                v_hat = v
            u = g / np.sqrt(v_hat)
            step = lrs[t - 1] * max(math.sqrt(float(np.mean(p * p))), min_scale) * u
            if decay[k]:
                step = step + wd * p
            params[k] = p - step
    return params


def test_adafactor_matches_reference():
    rng = np.random.default_rng(5)
    nested = {
        "big": {"kernel": (rng.normal(size=(128, 160)) * 0.05).astype(np.float32)},  # factored
        "small": {"kernel": rng.normal(size=(8, 16)).astype(np.float32)},  # not factored
        "norm": {"scale": rng.uniform(0.5, 1.5, (16,)).astype(np.float32)},
    }
    grads_seq = [_grads_like(nested, 20 + i) for i in range(3)]
    config = OptimizerConfig(
        name="adafactor", learning_rate=0.01, weight_decay=1e-3, clip_grad_norm=None
    )
    tx, schedule = make_optimizer(config)
    new = _flat(_run(tx, nested, grads_seq))
    params = _flat(nested)
    want = np_adafactor(
        params,
        [_flat(g) for g in grads_seq],
        lrs=[float(schedule(s)) for s in range(3)],
        wd=1e-3,
        decay={k: not k.endswith("['scale']") for k in params},
    )
    for k in want:
        np.testing.assert_allclose(np.asarray(new[k]), want[k], rtol=2e-5, atol=1e-7, err_msg=k)
    # The factored leaf really keeps row/column statistics only.
    state = jax.eval_shape(tx.init, nested)
    v_row = [leaf for leaf in jax.tree.leaves(state) if leaf.shape == (128,)]
    v_col = [leaf for leaf in jax.tree.leaves(state) if leaf.shape == (160,)]
    assert v_row and v_col
    assert not any(leaf.shape == (128, 160) for leaf in jax.tree.leaves(state))


def test_adamw_clipping_happens_before_the_update_rule():
    """Adam's update is nearly invariant to the gradient scale, so check clipping on its first
    moment: after one step mu = (1 - b1) * g * clip / ||g||."""
    tx, _ = make_optimizer(
        OptimizerConfig(name="adamw", learning_rate=0.1, b1=0.9, clip_grad_norm=0.5)
    )
    params = _params(6)
    grads = _grads_like(params, 7, scale=3.0)
    state = jax.jit(tx.init)(params)
    _, state = jax.jit(tx.update)(grads, state, params)
    mus = [
        s.mu for s in jax.tree.leaves(state, is_leaf=lambda x: hasattr(x, "mu")) if hasattr(s, "mu")
    ]
    assert len(mus) == 1
    factor = 0.5 / _global_norm(grads)
    want = jax.tree.map(lambda g: 0.1 * g * factor, _np(grads))
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-8), _np(mus[0]), want
    )


# ===================================================================== validation


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(name="lamb"), "unknown optimizer"),
        (dict(schedule="exponential"), "unknown schedule"),
        (dict(learning_rate=0.0), "learning_rate must be positive"),
        (dict(learning_rate=-1e-3), "learning_rate must be positive"),
        (dict(warmup_steps=-1), "warmup_steps"),
        (dict(schedule="cosine"), "needs total_steps"),
        (dict(schedule="linear", total_steps=0), "needs total_steps"),
        (dict(schedule="cosine", warmup_steps=10, total_steps=10), "must exceed warmup_steps"),
        (dict(schedule="constant", warmup_steps=10, total_steps=5), "must exceed warmup_steps"),
        (dict(clip_grad_norm=0.0), "clip_grad_norm"),
        (dict(clip_grad_norm=-1.0), "clip_grad_norm"),
    ],
)
def test_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        OptimizerConfig(**kwargs)


def test_valid_configs_build():
    for name in ("adamw", "adafactor", "sgd"):
        for schedule in ("constant", "cosine", "linear", "rsqrt"):
            config = OptimizerConfig(name=name, schedule=schedule, warmup_steps=2, total_steps=10)
            tx, sched = make_optimizer(config)
            assert isinstance(tx, optax.GradientTransformation)
            assert callable(sched)
