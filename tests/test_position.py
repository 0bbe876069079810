"""RoPE (plain and with Llama 3's frequency scaling), relative-position buckets, toeplitz and
RelativePositionBias against numpy loops."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from architecture_references import ATOL, RTOL, np_rope, np_rope_inv_freq, t5_bucket
from flax.core import meta

from t5x_rationale.architectures.position import (
    RelativePositionBias,
    apply_rope,
    relative_position_bucket,
    rope_inv_freq,
    toeplitz,
)

_rope = jax.jit(apply_rope, static_argnums=(2, 3))
LLAMA3 = ("llama3", 8.0, 1.0, 4.0, 16)  # the llama3 fixture's scaling (tests/fixtures/hf)
FIXTURE_NPZ = os.path.join(os.path.dirname(__file__), "fixtures", "hf", "llama3", "reference.npz")
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


@pytest.mark.parametrize("head_dim, theta", [(16, 500000.0), (64, 10000.0), (8, 100.0)])
def test_llama3_inverse_frequencies_match_a_python_loop(head_dim, theta):
    scaled = np.asarray(rope_inv_freq(head_dim, theta, LLAMA3))
    np.testing.assert_allclose(scaled, np_rope_inv_freq(head_dim, theta, LLAMA3), rtol=1e-6)
    plain = np.asarray(rope_inv_freq(head_dim, theta))
    np.testing.assert_allclose(plain, np_rope_inv_freq(head_dim, theta), rtol=1e-6)
    assert plain.dtype == scaled.dtype == np.float32


def test_llama3_inverse_frequencies_keep_divide_and_blend():
    """With N = 64, hi = 4, lo = 1 the wavelengths below 16 are kept, those above 64 divided
    by the factor, and those in between blended strictly between the two."""
    scaling = ("llama3", 8.0, 1.0, 4.0, 64)
    plain = np.asarray(rope_inv_freq(64, 1000.0), np.float64)
    scaled = np.asarray(rope_inv_freq(64, 1000.0, scaling), np.float64)
    wavelength = 2 * np.pi / plain
    short, long = wavelength < 16, wavelength > 64
    middle = ~short & ~long
    assert short.any() and long.any() and middle.any()
    np.testing.assert_array_equal(scaled[short], plain[short])
    np.testing.assert_allclose(scaled[long], plain[long] / 8, rtol=1e-6)
    assert np.all(scaled[middle] < plain[middle]) and np.all(scaled[middle] > plain[middle] / 8)


def test_llama3_inverse_frequencies_equal_the_fixtures():
    """transformers' own `inv_freq` of the llama3 fixture (head_dim 16, theta 5e5)."""
    want = np.load(FIXTURE_NPZ)["rope_inv_freq"]
    np.testing.assert_allclose(np.asarray(rope_inv_freq(16, 500000.0, LLAMA3)), want, rtol=1e-6)
    # ...which the scaling changes everywhere.
    assert np.all(np.abs(np.asarray(rope_inv_freq(16, 500000.0)) - want) > 1e-4 * want)


def test_apply_rope_with_llama3_scaling_matches_numpy_loop():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 5, 2, 16)).astype(np.float32)
    positions = np.array([[0, 1, 2, 3, 40], [7, 0, 17, 3, 100]], np.int32)
    got = np.asarray(_rope(jnp.asarray(x), jnp.asarray(positions), 500000.0, LLAMA3))
    want = np_rope(x, positions, 500000.0, LLAMA3)
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)
    plain = np.asarray(_rope(jnp.asarray(x), jnp.asarray(positions), 500000.0))
    assert np.abs(plain - got).max() > 1e-2


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
