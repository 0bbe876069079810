"""Numerical checks an accelerator must pass before its benchmark numbers mean anything.

Each check returns report entries (plain dicts): `name`, `passed`, `error` (the worst leaf's
max |got - want| divided by its scale), `tolerance`, `max_abs_error` and `scale`. A check
that cannot run on this backend is recorded by `skipped` (with the reason) instead.
Every check takes `perturb`, added to the candidate's result before the comparison, so a
test can show that the check fails when the candidate is wrong.

- `bf16_vs_f32`: forward loss and logits of a model in bfloat16 compute against float32.
- `attention_agreement`: the project's attention with one implementation against another
  (cuDNN against XLA on a GPU), output and gradients, bf16.
- `sharded_vs_one_device`: one train step on a mesh over all local devices against the
  same step on one device.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from t5x_rationale.architectures import build_model, get_preset, model_inputs
from t5x_rationale.architectures.attention import (
    causal_mask,
    dot_product_attention,
    padding_mask,
)
from t5x_rationale.benchmarks.random_batches import RandomBatches
from t5x_rationale.objectives import token_loss
from t5x_rationale.objectives.lm import forward_logits
from t5x_rationale.runtime.optimizers import OptimizerConfig, make_optimizer
from t5x_rationale.runtime.partitioning import MeshConfig, Partitioner, create_mesh
from t5x_rationale.runtime.trainer import Trainer

# Tolerances, each with its reason. bfloat16 keeps 8 significant bits: one rounding moves a
# value by at most 2^-9 (0.2%) of itself, and one unit in the last place is 0.4-0.8%.
#
# The loss is a float32 mean over every target token of a cross-entropy computed from bf16
# logits; per-token errors of either sign mostly cancel, so it stays within half a bf16 ulp
# (2^-9, 2e-3) of the float32 loss. Measured on CPU: 2e-5 to 9e-5 (decoder-tiny, t5-tiny,
# decoder-125m, t5-small at random init).
BF16_LOSS_RTOL = 2e-3
# A logit is a dot product of a hidden state that was rounded to bf16 after every layer with
# a bf16 embedding row, so its error grows with depth and width, not with its own size: the
# max error is taken relative to the largest |logit|. Measured on CPU: 1.0-1.8% (the four
# models above); 6% (about 8-15 ulps of the largest logit) leaves 3x for a GPU's other
# fusions and accumulation order.
BF16_LOGITS_TOL = 6e-2
# Two correct bf16 attention kernels: each was measured at 0.5% (output) and at most 0.8%
# (dq, dk, dv) of the largest value away from a float32 reference on CPU, so they can
# differ by about twice that; 2% and 3% of the largest value (at least 2.5 ulps) allow for it.
ATTENTION_OUT_TOL = 2e-2
ATTENTION_GRAD_TOL = 3e-2
# One float32 SGD step, sharded against one device: only the order of the gradient sums
# changes. Measured on 8 CPU devices: 1.2e-7 to 1.3e-7 of a leaf's largest parameter (about
# one float32 ulp, 2^-23 = 1.2e-7); 1e-6 is 8 ulps, while a sharding bug moves parameters
# by the size of the update (0.4-8% of a leaf's largest parameter here). Not AdamW: its
# first step moves every parameter by about lr * sign(gradient), so rounding flips the
# update of a near-zero gradient.
SHARDED_PARAMS_TOL = 1e-6
SHARDED_LOSS_RTOL = 1e-5
SHARDED_LEARNING_RATE = 0.5
CUDNN_KERNEL = "__cudnn$fmha"  # the custom-call target prefix of JAX's cuDNN attention


def _leaves(tree) -> list[np.ndarray]:
    return [np.asarray(x, np.float64) for x in jax.tree.leaves(jax.device_get(tree))]


def _leaf_error(got: np.ndarray, want: np.ndarray, scale) -> tuple[float, float, float]:
    """(max |got - want| / scale, max |got - want|, scale); scale None: max |want|."""
    max_abs = float(np.max(np.abs(got - want))) if got.size else 0.0
    if scale is None:
        scale = float(np.max(np.abs(want))) if want.size else 1.0
    if scale > 0:
        return max_abs / scale, max_abs, scale
    return (0.0 if max_abs == 0 else np.inf), max_abs, scale


def compare(name: str, got, want, *, tolerance: float, scale=None, must_differ=False, **info):
    """One report entry comparing two pytrees of arrays leaf by leaf.

    Args:
      name: the entry's name.
      got, want: pytrees with the same structure and shapes; `want` is the reference.
      tolerance: the largest `error` that passes.
      scale: divides each leaf's max |got - want|; default that leaf's max |want|.
      must_differ: also fail when got equals want exactly (for a low-precision candidate,
        equality means the low precision never reached the computation).
      info: extra fields for the entry.

    Returns:
      {"name", "passed", "error", "tolerance", "max_abs_error", "scale", **info} for the leaf
      with the largest scaled error; a NaN or infinity anywhere fails.
    """
    got_leaves, want_leaves = _leaves(got), _leaves(want)
    if [g.shape for g in got_leaves] != [w.shape for w in want_leaves]:
        raise ValueError(
            f"{name}: shapes differ: {[g.shape for g in got_leaves]} vs "
            f"{[w.shape for w in want_leaves]}"
        )
    errors = [_leaf_error(g, w, scale) for g, w in zip(got_leaves, want_leaves)]
    # the worst leaf, NaN counting as worst of all
    error, max_abs, used_scale = max(
        errors or [(0.0, 0.0, 1.0)], key=lambda e: np.inf if np.isnan(e[0]) else e[0]
    )
    differs = any(np.any(g != w) for g, w in zip(got_leaves, want_leaves))
    passed = bool(np.isfinite(error) and error <= tolerance and (differs or not must_differ))
    entry = dict(name=name, passed=passed, error=float(error), tolerance=tolerance)
    entry.update(max_abs_error=float(max_abs), scale=float(used_scale), **info)
    if must_differ and not differs:
        entry["reason"] = "identical to the reference: the low precision was not used"
    return entry


def skipped(name: str, reason: str) -> dict:
    """A check that cannot run here, recorded rather than left out."""
    return {"name": name, "passed": None, "skipped": reason}


def _perturbed(tree, amount: float):
    return tree if not amount else jax.tree.map(lambda x: x + amount, tree)


def _batch(config, batch_size: int, target_length: int, input_length: int) -> dict:
    data = RandomBatches(
        vocab_size=config.vocab_size,
        batch_size=batch_size,
        target_length=target_length,
        input_length=input_length if config.architecture == "encoder_decoder" else 0,
    )
    return next(data)


def bf16_vs_f32(
    preset: str,
    *,
    batch_size: int,
    target_length: int,
    input_length: int = 0,
    loss_rtol: float = BF16_LOSS_RTOL,
    logits_tol: float = BF16_LOGITS_TOL,
    perturb: float = 0.0,
) -> list[dict]:
    """Forward loss and logits in bfloat16 compute against float32, same params and batch.

    Parameters stay float32 in both (the presets' `param_dtype`); only `dtype` changes. The
    float32 side runs at the highest matmul precision, so a GPU's TF32 does not blur it.
    """
    full, half = build_model(get_preset(preset)), build_model(get_preset(preset, dtype="bfloat16"))
    batch = {
        k: jnp.asarray(v)
        for k, v in _batch(full.config, batch_size, target_length, input_length).items()
    }
    example = {k: v[:1] for k, v in model_inputs(batch).items()}
    params = nn.unbox(full.init(jax.random.PRNGKey(0), **example)["params"])

    def forward(model):
        return jax.jit(
            lambda p, b: (token_loss(model, p, b, None)[0], forward_logits(model, p, b, None))
        )

    with jax.default_matmul_precision("highest"):
        loss32, logits32 = forward(full)(params, batch)
    loss16, logits16 = forward(half)(params, batch)
    name = f"bf16_vs_f32/{preset}"
    return [
        compare(
            f"{name}/loss",
            _perturbed(loss16, perturb),
            loss32,
            tolerance=loss_rtol,
            loss_f32=float(loss32),
            loss_bf16=float(loss16),
        ),
        compare(
            f"{name}/logits",
            _perturbed(logits16, perturb),
            logits32,
            tolerance=logits_tol,
            must_differ=True,
        ),
    ]


ATTENTION_CASES = ("causal_gqa", "padding_bias")


def _attention_inputs(case: str, length: int) -> dict:
    """bf16 q, k, v, the mask, bias and scale of one case, which query rows are real, and an
    output cotangent. `causal_gqa` is the decoders' self-attention (8 query heads over 2 kv
    heads, causal); `padding_bias` is T5's (a bias per head, padded keys and queries)."""
    if case not in ATTENTION_CASES:
        raise ValueError(f"unknown attention case {case!r}; expected one of {ATTENTION_CASES}")
    batch, heads, head_dim = 2, 8, 64
    kv_heads = 2 if case == "causal_gqa" else heads
    keys = jax.random.split(jax.random.PRNGKey(1), 5)
    normal = lambda key, shape: jax.random.normal(key, shape).astype(jnp.bfloat16)  # noqa: E731
    positions = jnp.broadcast_to(jnp.arange(length), (batch, length))
    valid = positions < jnp.array([[length], [length * 3 // 4]])  # the second row is padded
    inputs = dict(
        query=normal(keys[0], (batch, length, heads, head_dim)),
        key=normal(keys[1], (batch, length, kv_heads, head_dim)),
        value=normal(keys[2], (batch, length, kv_heads, head_dim)),
        cotangent=jax.random.normal(keys[3], (batch, length, heads, head_dim)),
        valid=valid,
    )
    if case == "causal_gqa":
        inputs.update(mask=causal_mask(positions, positions), bias=None)
    else:
        inputs.update(
            mask=padding_mask(valid, valid), bias=normal(keys[4], (1, heads, length, length))
        )
    return inputs


def _attention_run(inputs: dict, implementation: str):
    """(output, (dq, dk, dv), the lowered program's text) for one implementation."""
    rows = inputs["valid"][:, :, None, None]

    def loss(query, key, value):
        out = dot_product_attention(
            query,
            key,
            value,
            bias=inputs["bias"],
            mask=inputs["mask"],
            implementation=implementation,
        )
        # Padded query rows attend to nothing; implementations may fill them differently.
        out = jnp.where(rows, out, 0).astype(jnp.float32)
        return jnp.sum(out * inputs["cotangent"]), out

    step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))
    args = (inputs["query"], inputs["key"], inputs["value"])
    (_, out), grads = step(*args)
    return out, grads, step.lower(*args).as_text()


def attention_agreement(
    case: str,
    *,
    candidate: str = "cudnn",
    reference: str = "xla",
    length: int = 256,
    out_tol: float = ATTENTION_OUT_TOL,
    grad_tol: float = ATTENTION_GRAD_TOL,
    perturb: float = 0.0,
) -> list[dict]:
    """The project's attention with `candidate` against `reference`: output and gradients.

    With candidate "cudnn" the entries also record whether the lowered program calls the
    cuDNN kernel, and fail if it does not.
    """
    inputs = _attention_inputs(case, length)
    out_c, grads_c, program = _attention_run(inputs, candidate)
    out_r, grads_r, _ = _attention_run(inputs, reference)
    name = f"attention_{candidate}_vs_{reference}/{case}"
    entries = [
        compare(f"{name}/output", _perturbed(out_c, perturb), out_r, tolerance=out_tol),
        compare(f"{name}/grads", _perturbed(grads_c, perturb), grads_r, tolerance=grad_tol),
    ]
    if candidate == "cudnn":
        for entry in entries:
            entry["cudnn_kernel_in_program"] = CUDNN_KERNEL in program
            entry["passed"] = entry["passed"] and entry["cudnn_kernel_in_program"]
    return entries


def _mesh_over(devices: list) -> MeshConfig:
    """data x fsdp over all `devices`: fsdp takes the largest factor below their number (8
    devices: 2 x 4), or all of them when there is none (2, 3 or 5 devices: 1 x n)."""
    n = len(devices)
    fsdp = max((f for f in range(2, n) if n % f == 0), default=n)
    return MeshConfig(data=n // fsdp, fsdp=fsdp, tensor=1)


def _sgd_trainer(config, mesh_config: MeshConfig, devices: list) -> Trainer:
    """A Trainer as `bench` builds one, with plain SGD (see SHARDED_PARAMS_TOL)."""
    tx, schedule = make_optimizer(OptimizerConfig(name="sgd", learning_rate=SHARDED_LEARNING_RATE))
    partitioner = Partitioner(create_mesh(mesh_config, devices))
    return Trainer(build_model(config), token_loss, tx, partitioner, learning_rate_fn=schedule)


def _one_step(trainer: Trainer, host_state, host_batch: dict):
    """(params, loss) on the host after one step from `host_state`, laid out for `trainer`."""
    batch = trainer.partitioner.host_batch_to_global(host_batch)
    _, _, shardings, _ = trainer.layout(batch)
    state = jax.tree.map(lambda x, s: jax.device_put(np.asarray(x), s), host_state, shardings)
    state, metrics = trainer.train_step(state, batch)
    return jax.device_get(state.params), float(metrics["loss"])


def sharded_vs_one_device(
    preset: str,
    *,
    target_length: int,
    input_length: int = 0,
    params_tol: float = SHARDED_PARAMS_TOL,
    loss_rtol: float = SHARDED_LOSS_RTOL,
    perturb: float = 0.0,
) -> list[dict]:
    """One float32 train step on a data x fsdp mesh over all local devices against one device.

    Both start from the same state (initialised on one device, then laid out for each mesh)
    and take the same batch, two rows per device (at least 8). Matmuls run at the highest
    precision, so the comparison is float32's on any backend. With one local device both
    meshes are that device; the entries say so.
    """
    devices = jax.local_devices()
    config = get_preset(preset)
    host_batch = _batch(config, max(8, 2 * len(devices)), target_length, input_length)
    mesh_config = _mesh_over(devices)
    with jax.default_matmul_precision("highest"):
        single = _sgd_trainer(config, MeshConfig(1, 1, 1), devices[:1])
        global_batch = single.partitioner.host_batch_to_global(host_batch)
        host_state = jax.device_get(single.init_state(0, global_batch))
        want_params, want_loss = _one_step(single, host_state, host_batch)
        sharded = _sgd_trainer(config, mesh_config, devices)
        got_params, got_loss = _one_step(sharded, host_state, host_batch)
    info = dict(devices=len(devices), mesh=f"{mesh_config.data}x{mesh_config.fsdp}x1")
    if len(devices) == 1:
        info["note"] = "one local device: the sharded mesh is the one-device mesh"
    name = f"sharded_vs_one_device/{preset}"
    return [
        compare(f"{name}/loss", got_loss, want_loss, tolerance=loss_rtol, **info),
        compare(
            f"{name}/params",
            _perturbed(got_params, perturb),
            want_params,
            tolerance=params_tol,
            **info,
        ),
    ]
