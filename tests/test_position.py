"""RoPE, relative-position buckets, toeplitz and RelativePositionBias against numpy loops."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from architecture_references import ATOL, RTOL, np_rope, t5_bucket
from flax.core import meta

from t5x_rationale.architectures.position import (
    RelativePositionBias,
    apply_rope,
    relative_position_bucket,
    toeplitz,
)

_rope = jax.jit(apply_rope, static_argnums=2)
_bucket = jax.jit(
    relative_position_bucket, static_argnames=("bidirectional", "num_buckets", "max_distance")
)


def test_apply_rope_matches_numpy_loop():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 7, 3, 8)).astype(np.float32)
    positions = np.array([[0, 1, 2, 3, 4, 5, 6], [5, 0, 17, 3, 3, 30, 11]], np.int32)
    for theta in (10000.0, 500.0):
        got = np.asarray(_rope(jnp.asarray(x), jnp.asarray(positions), theta))
        np.testing.assert_allclose(got, np_rope(x, positions, theta), rtol=RTOL, atol=ATOL)
    # Position 0 is the identity.
    zero = np.asarray(_rope(jnp.asarray(x), jnp.zeros((2, 7), jnp.int32), 10000.0))
    np.testing.assert_array_equal(zero, x)


def test_apply_rope_preserves_norm_and_dot_products_depend_on_relative_position():
    rng = np.random.default_rng(1)
    q = rng.standard_normal((1, 1, 2, 16)).astype(np.float32)
    k = rng.standard_normal((1, 1, 2, 16)).astype(np.float32)

    def rot(x, pos):
        return np.asarray(
            _rope(jnp.asarray(x), jnp.full((1, 1), pos, jnp.int32), 10000.0), np.float64
        )

    for pos in (0, 3, 25):
        np.testing.assert_allclose(
            np.linalg.norm(rot(q, pos), axis=-1), np.linalg.norm(q, axis=-1), rtol=RTOL, atol=ATOL
        )
    for m, n in [(5, 2), (2, 5), (7, 7)]:
        base = np.sum(rot(q, m) * rot(k, n), axis=-1)
        for shift in (1, 4, 13):
            np.testing.assert_allclose(
                np.sum(rot(q, m + shift) * rot(k, n + shift), axis=-1), base, rtol=RTOL, atol=ATOL
            )
    # ...and does depend on it.
    assert (
        np.abs(np.sum(rot(q, 5) * rot(k, 2), -1) - np.sum(rot(q, 5) * rot(k, 3), -1)).max() > 1e-3
    )


@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize("num_buckets,max_distance", [(32, 128), (16, 32), (8, 20), (64, 256)])
def test_relative_position_bucket_matches_scalar_reference(
    bidirectional, num_buckets, max_distance
):
    rel = np.arange(-300, 301, dtype=np.int32)
    got = np.asarray(
        _bucket(
            jnp.asarray(rel),
            bidirectional=bidirectional,
            num_buckets=num_buckets,
            max_distance=max_distance,
        )
    )
    expected = np.array([t5_bucket(int(r), bidirectional, num_buckets, max_distance) for r in rel])
    np.testing.assert_array_equal(got, expected)
    assert got.min() >= 0 and got.max() == num_buckets - 1


def test_relative_position_bucket_known_t5_values():
    # T5 default (32 buckets, max distance 128), bidirectional: key before the query -> low
    # half, key after -> high half; exact up to 7, then log-spaced, then saturated.
    rel = np.asarray([0, -1, -7, -8, -16, -127, -1000, 1, 7, 8, 1000], np.int32)
    got = _bucket(jnp.asarray(rel), bidirectional=True, num_buckets=32, max_distance=128)
    np.testing.assert_array_equal(np.asarray(got), [0, 1, 7, 8, 10, 15, 15, 17, 23, 24, 31])
    # Causal: keys after the query all share bucket 0.
    rel = np.asarray([3, 1, 0, -1, -15, -16, -500], np.int32)
    got = _bucket(jnp.asarray(rel), bidirectional=False, num_buckets=32, max_distance=128)
    np.testing.assert_array_equal(np.asarray(got), [0, 0, 0, 1, 15, 16, 31])


def test_toeplitz_matches_loop_and_checks_its_width():
    rng = np.random.default_rng(3)
    length = 6
    diagonals = rng.standard_normal((2, 3, 2 * length - 1)).astype(np.float32)
    got = np.asarray(jax.jit(toeplitz, static_argnums=1)(jnp.asarray(diagonals), length))
    expected = np.array(
        [
            [
                [
                    [diagonals[a, b, j - i + length - 1] for j in range(length)]
                    for i in range(length)
                ]
                for b in range(3)
            ]
            for a in range(2)
        ]
    )
    np.testing.assert_array_equal(got, expected)
    with pytest.raises(ValueError, match="needs 11 diagonals"):
        toeplitz(jnp.zeros((2, 10)), length)


@pytest.mark.parametrize("bidirectional", [True, False])
def test_relative_bias_from_diagonals_equals_bucket_lookup_with_gradient(bidirectional):
    """`for_length` (diagonals, used when positions are 0..L-1) against the general path."""
    length = 40  # past max_distance, so the log-spaced and saturated buckets appear
    module = RelativePositionBias(
        num_buckets=16, max_distance=24, num_heads=3, bidirectional=bidirectional
    )
    positions = jnp.arange(length)[None]
    params = meta.unbox(module.init(jax.random.PRNGKey(0), positions, positions))
    cotangent = jnp.asarray(
        np.random.default_rng(4).standard_normal((1, 3, length, length)), jnp.float32
    )

    def bias_and_grad(method):
        def loss(p):
            bias = (
                module.apply(p, length, method="for_length")
                if method
                else module.apply(p, positions, positions)
            )
            return jnp.sum(bias * cotangent), bias

        (_, bias), grad = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
        return bias, grad["params"]["rel_embedding"]

    fast_bias, fast_grad = bias_and_grad(True)
    ref_bias, ref_grad = bias_and_grad(False)
    np.testing.assert_array_equal(fast_bias, ref_bias)
    np.testing.assert_allclose(fast_grad, ref_grad, rtol=1e-5, atol=1e-4)
    # Every bucket a distance reaches gets a gradient (bidirectional never uses bucket 8:
    # distance 0 is in the lower half).
    used = (np.abs(np.asarray(ref_grad)) > 0).all(axis=0).sum()
    assert used == (15 if bidirectional else 16)
