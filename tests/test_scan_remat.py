"""Scanned layers and every remat policy give the logits and gradients of the plain model."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from architecture_references import (
    ATOL,
    RTOL,
    assert_close_to_scale,
    logits_of,
    np_llama_forward,
    np_t5_forward,
    random_tokens,
    stack_layers,
)
from flax.core import meta
from random_params import random_params

from t5x_rationale.architectures import build_model, get_preset


def _t5_inputs(rng, c):
    enc = random_tokens(rng, (2, 6), c.vocab_size)
    enc[1, 5:] = 0
    return dict(
        encoder_input_tokens=enc, decoder_input_tokens=random_tokens(rng, (2, 5), c.vocab_size)
    )


def _decoder_inputs(rng, c):
    return dict(decoder_input_tokens=random_tokens(rng, (2, 6), c.vocab_size))


CASES = {"t5": ("t5-tiny", _t5_inputs), "decoder": ("decoder-tiny", _decoder_inputs)}


@pytest.mark.parametrize("arch,remat_policy", [("t5", "none"), ("decoder", "dots_no_batch")])
def test_scan_layers_matches_unrolled(arch, remat_policy):
    """Scanned params are the unrolled ones stacked on a leading axis; logits are the same.

    The unrolled logits come from the numpy reference on the unrolled params (checked against
    the unrolled modules above), which saves compiling the unrolled 2-layer model here.
    """
    preset, make_inputs = CASES[arch]
    unrolled = build_model(get_preset(preset))
    scanned = build_model(get_preset(preset, scan_layers=True, remat_policy=remat_policy))
    inputs = make_inputs(np.random.default_rng(6), unrolled.config)
    params = random_params(unrolled, **inputs)
    assert "layers_1" in str(jax.tree_util.tree_structure(params))
    stacked = stack_layers(params)
    # The scanned model's own params have exactly this structure and these shapes.
    scanned_shapes = jax.tree_util.tree_map(
        jnp.shape,
        meta.unbox(
            jax.eval_shape(
                scanned.init,
                jax.random.PRNGKey(0),
                **{k: jnp.asarray(v) for k, v in inputs.items()},
            )["params"]
        ),
    )
    assert jax.tree_util.tree_map(jnp.shape, stacked) == scanned_shapes
    if arch == "t5":
        _, want = np_t5_forward(
            params, unrolled.config, inputs["encoder_input_tokens"], inputs["decoder_input_tokens"]
        )
    else:
        want = np_llama_forward(params, unrolled.config, inputs["decoder_input_tokens"])
    np.testing.assert_allclose(logits_of(scanned, stacked, **inputs), want, rtol=RTOL, atol=ATOL)
    # Layer order matters: reversing the stack changes the logits.
    reversed_stack = stack_layers({**params, **{k: _reverse_layers(v) for k, v in params.items()}})
    assert np.abs(logits_of(scanned, reversed_stack, **inputs) - want).max() > 1e-3


def _reverse_layers(tree):
    if not isinstance(tree, dict):
        return tree
    names = sorted((k for k in tree if k.startswith("layers_")), key=lambda k: int(k.split("_")[1]))
    renamed = dict(zip(names, reversed(names)))
    return {renamed.get(k, k): v for k, v in tree.items()}


def test_remat_policies_match_no_remat():
    """Logits and parameter gradients under every remat policy equal those without remat."""
    policies = ("full", "dots", "dots_no_batch")
    models = [
        build_model(get_preset("decoder-tiny", num_layers=1, remat_policy=p))
        for p in ("none",) + policies
    ]
    inputs = {
        k: jnp.asarray(v)
        for k, v in _decoder_inputs(np.random.default_rng(7), models[0].config).items()
    }
    params = random_params(models[0], **inputs)
    weights = jnp.asarray(
        np.random.default_rng(8).standard_normal((2, 6, models[0].config.vocab_size)), jnp.float32
    )

    def logits_and_grads(model, p):
        def loss(p):
            logits = model.apply({"params": p}, **inputs)
            return jnp.sum(logits * weights), logits

        (_, logits), grads = jax.value_and_grad(loss, has_aux=True)(p)
        return logits, grads

    (ref_logits, ref_grads), *others = jax.jit(lambda p: [logits_and_grads(m, p) for m in models])(
        params
    )
    assert max(float(jnp.abs(g).max()) for g in jax.tree_util.tree_leaves(ref_grads)) > 1e-3
    for policy, (logits, grads) in zip(policies, others):
        np.testing.assert_allclose(logits, ref_logits, rtol=RTOL, atol=ATOL, err_msg=policy)
        assert jax.tree_util.tree_structure(grads) == jax.tree_util.tree_structure(ref_grads), (
            policy
        )
        jax.tree_util.tree_map(
            lambda a, b: assert_close_to_scale(a, b, err_msg=policy), grads, ref_grads
        )
