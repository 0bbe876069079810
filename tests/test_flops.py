"""Model FLOP formulas in t5x_rationale/runtime/flops.py against hand-enumerated matmuls, the
jaxpr's dot_generals, and XLA's own cost analysis of the compiled forward pass."""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from t5x_rationale.architectures import (
    QuietStarConfig,
    build_model,
    dummy_batch,
    get_preset,
    model_inputs,
)
from t5x_rationale.objectives.pinto import pinto_loss
from t5x_rationale.objectives.qcrd import qcrd_loss
from t5x_rationale.quiet_star.spec import Context, ThinkingSpec
from t5x_rationale.quiet_star.think import think
from t5x_rationale.runtime.flops import (
    decoder_forward_flops,
    measure_peak_matmul_flops,
    objective_step_counts,
    qcrd_step_counts,
    quiet_star_forward_flops,
    t5_forward_flops,
    train_step_flops,
)

DECODER = dict(emb_dim=256, mlp_dim=1024, vocab_size=2048, head_dim=32, num_heads=8, num_kv_heads=4)
T5 = dict(emb_dim=256, mlp_dim=1024, vocab_size=2048, head_dim=32, num_heads=8)


# ============================================================================ helpers


def _forward(config, batch_size, target_length, input_length=0):
    """(forward fn, abstract params, abstract batch) -- shapes only, nothing is initialised."""
    model = build_model(config)
    batch = dummy_batch(config, batch_size, target_length=target_length, input_length=input_length)
    inputs = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in model_inputs(batch).items()}
    params = jax.eval_shape(
        lambda i: nn.unbox(model.init(jax.random.PRNGKey(0), **i)["params"]), inputs
    )

    def forward(p, i):
        return model.apply({"params": p}, **i, deterministic=True)

    return forward, params, inputs


def _xla_flops(config, batch_size, target_length, input_length=0):
    forward, params, inputs = _forward(config, batch_size, target_length, input_length)
    cost = jax.jit(forward).lower(params, inputs).compile().cost_analysis()
    if isinstance(cost, (list, tuple)):  # older JAX: one dict per computation
        cost = cost[0]
    return float(cost["flops"])


def _jaxpr_matmul_flops(config, batch_size, target_length, input_length=0):
    """2 x (output elements) x (contracted size), summed over the dot_generals in the jaxpr."""
    forward, params, inputs = _forward(config, batch_size, target_length, input_length)
    # The T5 relative-position bias is a [heads, buckets] table lookup written as a one-hot
    # contraction: not a model matmul, so it is left out of the count.
    lookup_table = (config.num_heads, getattr(config, "relative_attention_num_buckets", -1))
    return _dot_flops(jax.make_jaxpr(forward)(params, inputs).jaxpr, lookup_table)


def _dot_flops(jaxpr, lookup_table=None, multiplier=1):
    """dot_general FLOPs of a jaxpr, descending into sub-jaxprs (scan bodies x their length)."""
    total = 0
    for eqn in jaxpr.eqns:
        is_lookup = any(v.aval.shape == lookup_table for v in eqn.invars)
        if eqn.primitive.name == "dot_general" and not is_lookup:
            (lhs_contract, _), _ = eqn.params["dimension_numbers"]
            lhs = eqn.invars[0].aval.shape
            out = eqn.outvars[0].aval.shape
            total += multiplier * 2 * math.prod(out) * math.prod(lhs[d] for d in lhs_contract)
        inner = multiplier * (eqn.params.get("length", 1) if eqn.primitive.name == "scan" else 1)
        for value in eqn.params.values():
            for sub in value if isinstance(value, (list, tuple)) else [value]:
                if isinstance(sub, jax.extend.core.ClosedJaxpr):
                    total += _dot_flops(sub.jaxpr, lookup_table, inner)
                elif isinstance(sub, jax.extend.core.Jaxpr):
                    total += _dot_flops(sub, lookup_table, inner)
    return total


def _matmul(m, k, n, batch=1):
    """FLOPs of `batch` independent [m, k] @ [k, n] products."""
    return 2 * batch * m * k * n


# ============================================================ hand-enumerated 1-layer


def test_decoder_formula_equals_hand_enumerated_matmuls():
    b, length = 2, 16
    c = get_preset("decoder-tiny", num_layers=1, **DECODER)
    e, h, k, d, f, v = c.emb_dim, c.num_heads, c.kv_heads, c.head_dim, c.mlp_dim, c.vocab_size
    tokens = b * length
    matmuls = [
        _matmul(tokens, e, h * d),  # query
        _matmul(tokens, e, k * d),  # key
        _matmul(tokens, e, k * d),  # value
        _matmul(length, d, length, batch=b * h),  # scores q k^T, every head
        _matmul(length, length, d, batch=b * h),  # probs v
        _matmul(tokens, h * d, e),  # out
        _matmul(tokens, e, f),  # wi_0 (gate)
        _matmul(tokens, e, f),  # wi_1 (up)
        _matmul(tokens, f, e),  # wo (down)
        _matmul(tokens, e, v),  # logits
    ]
    assert decoder_forward_flops(c, b, length) == sum(matmuls)
    assert _jaxpr_matmul_flops(c, b, length) == sum(matmuls)


def test_t5_formula_equals_hand_enumerated_matmuls():
    b, s, t = 2, 12, 8
    c = get_preset("t5-tiny", num_encoder_layers=1, num_decoder_layers=1, **T5)
    e, h, d, f, v = c.emb_dim, c.num_heads, c.head_dim, c.mlp_dim, c.vocab_size
    hd = h * d
    enc, dec = b * s, b * t
    encoder = [
        # q, k, v
        _matmul(enc, e, hd),
        _matmul(enc, e, hd),
        _matmul(enc, e, hd),
        # scores, values
        _matmul(s, d, s, batch=b * h),
        _matmul(s, s, d, batch=b * h),
        _matmul(enc, hd, e),  # out
        # gated-GELU MLP
        _matmul(enc, e, f),
        _matmul(enc, e, f),
        _matmul(enc, f, e),
    ]
    decoder = [
        # self q, k, v
        _matmul(dec, e, hd),
        _matmul(dec, e, hd),
        _matmul(dec, e, hd),
        # self scores, values
        _matmul(t, d, t, batch=b * h),
        _matmul(t, t, d, batch=b * h),
        _matmul(dec, hd, e),  # self out
        _matmul(dec, e, hd),  # cross q
        # cross k, v (encoder tokens)
        _matmul(enc, e, hd),
        _matmul(enc, e, hd),
        # cross scores, values
        _matmul(t, d, s, batch=b * h),
        _matmul(t, s, d, batch=b * h),
        _matmul(dec, hd, e),  # cross out
        # MLP
        _matmul(dec, e, f),
        _matmul(dec, e, f),
        _matmul(dec, f, e),
        _matmul(dec, e, v),  # logits
    ]
    assert t5_forward_flops(c, b, s, t) == sum(encoder) + sum(decoder)
    assert _jaxpr_matmul_flops(c, b, t, s) == sum(encoder) + sum(decoder)


# ===================================================== multi-layer: jaxpr and XLA counts


def test_decoder_formula_vs_jaxpr_and_xla():
    b, length = 2, 64
    c = get_preset("decoder-tiny", **DECODER)
    formula = decoder_forward_flops(c, b, length)
    assert formula == _jaxpr_matmul_flops(c, b, length)
    xla = _xla_flops(c, b, length)
    # XLA also counts elementwise work (norms, softmax, residuals), never less than the matmuls.
    assert 0.85 * xla <= formula <= xla, (formula, xla, formula / xla)


def test_t5_formula_vs_jaxpr_and_xla():
    b, s, t = 2, 48, 32
    c = get_preset("t5-tiny", **T5)
    formula = t5_forward_flops(c, b, s, t)
    assert formula == _jaxpr_matmul_flops(c, b, t, s)
    xla = _xla_flops(c, b, t, s)
    assert 0.85 * xla <= formula <= xla, (formula, xla, formula / xla)


@pytest.mark.parametrize(
    "overrides",
    [
        dict(num_kv_heads=None),
        dict(num_kv_heads=1, num_layers=3),
        dict(tie_embeddings=True),
        dict(sliding_window=4),
        dict(scan_layers=True, num_layers=3),
        dict(remat_policy="full"),
    ],
)
def test_decoder_formula_vs_jaxpr_variants(overrides):
    """GQA/MQA, depth, tied embeddings, sliding windows (attention still counted over the full
    length), scanned and rematerialised layers (the forward pass itself is unchanged)."""
    c = get_preset("decoder-tiny", **overrides)
    assert decoder_forward_flops(c, 3, 10) == _jaxpr_matmul_flops(c, 3, 10)


def test_t5_formula_vs_jaxpr_variants():
    c = get_preset(
        "t5-tiny",
        num_encoder_layers=3,
        num_decoder_layers=1,
        logits_via_embedding=True,
        mlp_activations=("gelu", "linear", "relu"),
    )
    assert t5_forward_flops(c, 2, 7, 5) == _jaxpr_matmul_flops(c, 2, 5, 7)


# ================================================================ train step, peak


def test_train_step_flops_is_three_forwards():
    dec = get_preset("decoder-tiny", **DECODER)
    t5 = get_preset("t5-tiny", **T5)
    assert train_step_flops(dec, 4, target_length=32) == 3 * decoder_forward_flops(dec, 4, 32)
    assert train_step_flops(dec, 4, target_length=32, input_length=99) == 3 * decoder_forward_flops(
        dec, 4, 32
    )
    assert train_step_flops(t5, 4, target_length=32, input_length=48) == 3 * t5_forward_flops(
        t5, 4, 48, 32
    )
    # Scaling sanity: linear in batch, and more than linear in length (attention).
    assert decoder_forward_flops(dec, 8, 32) == 2 * decoder_forward_flops(dec, 4, 32)
    assert decoder_forward_flops(dec, 4, 64) > 2 * decoder_forward_flops(dec, 4, 32)


def test_quiet_star_formula_is_the_dense_forward_minus_its_masked_work():
    """The dense-mask forward's dot_generals = what the decomposition needs + work it masks out.

    dense_mask unrolls the steps, so its jaxpr holds every matmul once. At step k it attends
    to T * (k + 1) keys (needed: the T context keys and the stream's own k); the mixing head
    runs only at the n_t scored steps, as the decomposition needs.
    """
    n_a, n_t, rows, length = 5, 3, 2, 16
    config = QuietStarConfig(get_preset("decoder-tiny", **DECODER))
    d = config.decoder
    spec = ThinkingSpec(n_a, n_t, implementation="dense_mask")
    tokens = jax.ShapeDtypeStruct((rows, length), jnp.int32)
    params = jax.eval_shape(
        lambda t: nn.unbox(build_model(config).init(jax.random.PRNGKey(0), t)["params"]), tokens
    )
    ctx = Context(tokens, jax.ShapeDtypeStruct((rows, length), bool), None, jax.random.PRNGKey(0))
    counted = _dot_flops(
        jax.make_jaxpr(lambda p, t, c: think(config, spec, p, t, c))(params, tokens, ctx).jaxpr
    )
    steps, heads = spec.num_steps, d.num_heads * d.head_dim
    attention_waste = sum(
        rows * length * d.num_layers * 4 * heads * k * (length - 1) for k in range(1, steps + 1)
    )
    needed = quiet_star_forward_flops(
        config, rows, length, num_ahead=n_a, num_talk=n_t, num_thoughts=1
    )
    assert needed == counted - attention_waste
    thinking = ThinkingSpec(num_ahead=n_a, num_talk=n_t, num_thoughts=1)
    assert train_step_flops(config, rows, target_length=length, thinking=thinking) == 3 * needed
    with pytest.raises(ValueError, match="thinking"):
        train_step_flops(config, 1, target_length=length)


def test_quiet_star_formula_counts_the_context_and_start_step_once_per_copied_row():
    """streams with `copies` runs the context forward and step 1 once per group of copies: the
    matmuls its jaxpr drops against copies=1 are what the formula drops for P thoughts."""
    n_a, n_t, batch, copies, length = 5, 3, 2, 3, 16
    config = QuietStarConfig(get_preset("decoder-tiny", **DECODER))
    spec = ThinkingSpec(n_a, n_t)  # streams
    rows = batch * copies
    tokens = jax.ShapeDtypeStruct((rows, length), jnp.int32)
    params = jax.eval_shape(
        lambda t: nn.unbox(build_model(config).init(jax.random.PRNGKey(0), t)["params"]), tokens
    )
    ctx = Context(tokens, jax.ShapeDtypeStruct((rows, length), bool), None, jax.random.PRNGKey(0))
    counted = {
        c: _dot_flops(
            jax.make_jaxpr(lambda p, t, x, c=c: think(config, spec, p, t, x, copies=c))(
                params, tokens, ctx
            ).jaxpr
        )
        for c in (1, copies)
    }
    formula = {
        c: quiet_star_forward_flops(
            config, rows // c, length, num_ahead=n_a, num_talk=n_t, num_thoughts=c
        )
        for c in (1, copies)
    }
    # the step-1 token's weight on its own value is an elementwise product there, not a dot_general
    d = config.decoder
    own_value = (rows - batch) * length * d.num_layers * 2 * d.num_heads * d.head_dim
    assert counted[1] - counted[copies] > 0
    assert counted[1] - counted[copies] + own_value == formula[1] - formula[copies]


def test_measure_peak_matmul_flops():
    peak = measure_peak_matmul_flops(size=256, repeats=3)
    assert isinstance(peak, float)
    assert np.isfinite(peak) and peak > 1e6
    other = measure_peak_matmul_flops(size=128, repeats=2, device=jax.devices()[1])
    assert np.isfinite(other) and other > 0


@pytest.mark.parametrize("preset", ["t5-tiny", "decoder-tiny"])
def test_qcrd_step_counts_equal_the_loss_forwards_matmuls(preset):
    """The QCRD count is the label forward plus every candidate slot over its question (one
    encoding per question for T5, a question ++ candidate row for a decoder): it equals the
    dot_generals of `qcrd_loss`'s own forward."""
    c = get_preset(preset, **(T5 if preset.startswith("t5") else DECODER))
    b, lin, lt, k, lc = 2, 24, 8, 3, 16
    ones = lambda *s: jnp.ones(s, jnp.int32)  # noqa: E731
    batch = {
        "decoder_input_tokens": ones(b, lt),
        "decoder_target_tokens": ones(b, lt),
        "candidate_encoder_input_tokens": ones(b, lin),
        "candidate_input_tokens": ones(b, k, lc),
        "candidate_target_tokens": ones(b, k, lc),
        "candidate_loss_weights": jnp.ones((b, k, lc), jnp.float32),
        "candidate_mask": ones(b, k),
        "candidate_is_positive": ones(b, k),
    }
    t5 = c.architecture == "encoder_decoder"
    if t5:
        batch["encoder_input_tokens"] = ones(b, lin)
    _, params, _ = _forward(c, b, lt, lin if t5 else 0)
    model = build_model(c)
    jaxpr = jax.make_jaxpr(lambda p: qcrd_loss(model, p, batch, None)[0])(params)
    lookup = (c.num_heads, c.relative_attention_num_buckets) if t5 else None
    tokens, flops = qcrd_step_counts(c, batch)
    assert flops == 3 * _dot_flops(jaxpr.jaxpr, lookup)
    label_tokens = b * (lin + lt) if t5 else b * lt
    cand_tokens = b * (lin + k * lc) if t5 else b * k * (lin + lc)
    assert tokens == label_tokens + cand_tokens


def test_pinto_step_counts_equal_the_loss_forwards_matmuls():
    """PINTO scores every choice of the batch and of its perturbed copy over one encoding per
    row: the count equals the dot_generals of `pinto_loss`'s forward."""
    c = get_preset("t5-tiny", **T5)
    b, lin, k, lc = 2, 24, 4, 8
    ones = lambda *s: jnp.ones(s, jnp.int32)  # noqa: E731
    batch = {
        "encoder_input_tokens": ones(b, lin) * 7,
        "rationale_mask": ones(b, lin),
        "choice_input_tokens": ones(b, k, lc),
        "choice_target_tokens": ones(b, k, lc),
        "choice_loss_weights": jnp.ones((b, k, lc), jnp.float32),
        "choice_mask": ones(b, k),
        "choice_label": jnp.zeros((b,), jnp.int32),
    }
    _, params, _ = _forward(c, b, lc, lin)
    model = build_model(c)
    jaxpr = jax.make_jaxpr(lambda p: pinto_loss(model, p, batch, None)[0])(params)
    tokens, flops = objective_step_counts(c, batch)
    assert flops == 3 * _dot_flops(jaxpr.jaxpr, (c.num_heads, c.relative_attention_num_buckets))
    assert tokens == 2 * b * (lin + k * lc)
    assert objective_step_counts(c, {"decoder_target_tokens": ones(b, lc)}) is None
