"""`token_matmul` (the 2-D matmul under DenseGeneral) against plain autodiff of x @ w."""

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from t5x_rationale.architectures.layers import DenseGeneral, token_matmul


@pytest.mark.parametrize("k,f", [(8, 24), (24, 8), (16, 16)], ids=["up", "down", "square"])
@pytest.mark.parametrize("out_type", [None, jnp.float32])
def test_gradients_match_autodiff(k, f, out_type):
    rng = np.random.default_rng(k * 100 + f)
    x = jnp.asarray(rng.standard_normal((10, k)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((k, f)), jnp.float32)
    cotangent = jnp.asarray(rng.standard_normal((10, f)), jnp.float32)
    np.testing.assert_allclose(
        np.asarray(token_matmul(x, w, out_type)),
        np.asarray(x) @ np.asarray(w),
        rtol=1e-5,
        atol=1e-5,
    )
    got = jax.grad(lambda a, b: jnp.sum(token_matmul(a, b, out_type) * cotangent), argnums=(0, 1))(
        x, w
    )
    # The written-out gradients of sum(c * (x @ w)): dx = c w^T, dw = x^T c (float64).
    c, x64, w64 = (np.asarray(a, np.float64) for a in (cotangent, x, w))
    for g, want in zip(got, (c @ w64.T, x64.T @ c)):
        np.testing.assert_allclose(np.asarray(g), want, rtol=1e-5, atol=1e-5)


def test_bfloat16_gradients_keep_input_dtypes():
    x = jnp.ones((4, 8), jnp.bfloat16)
    w = jnp.ones((8, 3), jnp.bfloat16)
    dx, dw = jax.grad(lambda a, b: jnp.sum(token_matmul(a, b, jnp.float32)), argnums=(0, 1))(x, w)
    assert dx.dtype == jnp.bfloat16 and dw.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(dw, np.float32), np.full((8, 3), 4.0))


@pytest.mark.parametrize("axis,features", [(-1, 6), (-1, (2, 3)), ((-2, -1), 5), (0, 4)])
def test_dense_general_matches_einsum_and_its_gradient(axis, features):
    x = jnp.asarray(np.random.default_rng(0).standard_normal((3, 4, 2, 3)), jnp.float32)
    layer = DenseGeneral(
        features, ("a",) * (len(np.atleast_1d(axis)) + len(np.atleast_1d(features))), axis=axis
    )
    params = flax.core.meta.unbox(layer.init(jax.random.PRNGKey(0), x))
    kernel = params["params"]["kernel"]
    axes = tuple(a % x.ndim for a in np.atleast_1d(axis))

    def reference(p, inputs):
        return jax.lax.dot_general(
            inputs, p["params"]["kernel"], ((axes, tuple(range(len(axes)))), ((), ()))
        )

    np.testing.assert_allclose(
        np.asarray(layer.apply(params, x)), np.asarray(reference(params, x)), rtol=1e-5, atol=1e-5
    )
    loss = lambda fn: lambda p, i: jnp.sum(jnp.sin(fn(p, i)))  # noqa: E731
    got = jax.grad(loss(layer.apply), argnums=(0, 1))(params, x)
    want = jax.grad(loss(reference), argnums=(0, 1))(params, x)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-5, atol=1e-5)
    assert kernel.shape[: len(axes)] == tuple(x.shape[a] for a in axes)
