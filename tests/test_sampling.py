"""The sort-free token choice of `inference/sampling.py` against slow references written
here: argmax by numpy, the nucleus by sorting, the two-level draw (`quiet_star/sampling.py`,
shared with the thought sampler) by float64 running sums."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from t5x_rationale.inference.decode_config import DecodeConfig
from t5x_rationale.inference.sampling import first_argmax, sample_token, top_p_keep
from t5x_rationale.quiet_star.sampling import BLOCK, inverse_cdf_draw, locate


def test_first_argmax_matches_numpy_with_ties_and_minus_inf():
    rng = np.random.default_rng(0)
    x = rng.integers(-3, 3, (64, 300)).astype(np.float32)  # many ties
    x[5] = -np.inf
    x[6, :] = -np.inf
    x[6, 17] = 0.0
    np.testing.assert_array_equal(np.asarray(first_argmax(jnp.asarray(x))), np.argmax(x, -1))


def _nucleus_by_sorting(probs: np.ndarray, top_p: float) -> np.ndarray:
    """Keep a token when the mass of the strictly more probable tokens is below top_p."""
    keep = np.zeros(probs.shape, bool)
    for r, row in enumerate(probs.astype(np.float64)):
        order = np.argsort(-row, kind="stable")
        mass_before = np.cumsum(row[order]) - row[order]
        for i, j in enumerate(order):
            first_of_ties = np.searchsorted(-row[order], -row[j], side="left")
            keep[r, j] = mass_before[first_of_ties] < top_p
    return keep


@pytest.mark.parametrize("top_p", [0.05, 0.5, 0.9, 0.99])
def test_top_p_keep_matches_sorting(top_p):
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(16, 700)) * rng.uniform(0.1, 4.0, (16, 1))
    logits[3, 100:] = -np.inf  # forbidden or top-k-filtered tokens
    probs = np.asarray(jax.nn.softmax(jnp.asarray(logits, jnp.float32), -1))
    got = np.asarray(top_p_keep(jnp.asarray(probs), top_p))
    want = _nucleus_by_sorting(probs, top_p)
    # a token whose mass above sits within float32 rounding of top_p may go either way
    above = np.array([[row[row > v].sum() for v in row] for row in probs.astype(np.float64)])
    clear = np.abs(above - top_p) > 1e-5
    np.testing.assert_array_equal(got[clear], want[clear])
    assert got[np.arange(16), probs.argmax(-1)].all()  # the top token always stays


def test_top_p_keep_ties():
    probs = jnp.asarray([[0.4, 0.2, 0.2, 0.2], [0.25, 0.25, 0.25, 0.25]], jnp.float32)
    np.testing.assert_array_equal(np.asarray(top_p_keep(probs, 0.5))[0], [1, 1, 1, 1])
    np.testing.assert_array_equal(np.asarray(top_p_keep(probs, 0.3))[0], [1, 0, 0, 0])
    np.testing.assert_array_equal(np.asarray(top_p_keep(probs, 0.1))[1], [1, 1, 1, 1])


def _first_reaching(mass: np.ndarray, u: float) -> tuple[int, float]:
    """(first j whose float64 running sum reaches u * total, distance of the target to the
    nearest running sum over the total: small means rounding may decide)."""
    running = np.cumsum(mass)
    target = max(u * running[-1], np.finfo(np.float32).tiny)
    return int(np.argmax(running >= target)), np.min(np.abs(running - target)) / running[-1]


def _locate_slowly(weights: np.ndarray, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row: the block by u[0] over block masses, then the entry inside it by u[1]; and
    the smaller of the two levels' gaps."""
    picks, gaps = [], []
    for row, u_block, u_inside in zip(weights.astype(np.float64), u[0], u[1]):
        blocks = np.pad(row, (0, -len(row) % BLOCK)).reshape(-1, BLOCK)
        block, gap_block = _first_reaching(blocks.sum(-1), u_block)
        inside, gap_inside = _first_reaching(blocks[block], u_inside)
        picks.append(block * BLOCK + inside)
        gaps.append(min(gap_block, gap_inside))
    return np.array(picks), np.array(gaps)


def test_locate_matches_two_running_sums():
    rng = np.random.default_rng(2)
    rows, vocab = 256, 3 * BLOCK + 37  # a padded last block
    weights = rng.exponential(size=(rows, vocab)).astype(np.float32)
    weights[rng.random((rows, vocab)) < 0.5] = 0.0  # zero weights are never drawn
    weights[0, :] = 0.0
    weights[0, 200] = 1.0
    weights[1, : 2 * BLOCK] = 0.0  # whole empty blocks
    u = rng.random((2, rows)).astype(np.float32)
    u[:, 1] = 0.0  # the first entry with weight, past the empty blocks
    u[:, 2] = 0.0
    u[:, 3] = np.nextafter(np.float32(1.0), np.float32(0.0))  # the last entry with weight
    got = np.asarray(locate(jnp.asarray(weights), jnp.asarray(u)))
    want, gaps = _locate_slowly(weights, u)
    clear = gaps > 1e-5  # leave out targets within rounding of a boundary
    assert clear.sum() > 200
    np.testing.assert_array_equal(got[clear], want[clear])
    assert (weights[np.arange(rows), got] > 0).all()
    assert got[0] == 200
    positive = [np.flatnonzero(weights[r] > 0) for r in (1, 2, 3)]
    assert [got[1], got[2], got[3]] == [positive[0][0], positive[1][0], positive[2][-1]]


def test_inverse_cdf_draw_frequencies():
    probs = np.array([0.5, 0.0, 0.25, 0.125, 0.125], np.float32)
    n = 20000
    draws = np.asarray(
        inverse_cdf_draw(jax.random.PRNGKey(0), jnp.broadcast_to(jnp.asarray(probs), (n, 5)))
    )
    counts = np.bincount(draws, minlength=5)
    assert counts[1] == 0
    sigma = np.sqrt(n * probs * (1 - probs))
    assert (np.abs(counts - n * probs) < 5 * sigma + 1e-9).all(), counts


def test_sample_token_filters():
    rng = np.random.default_rng(3)
    logits = jnp.asarray(rng.normal(size=(32, 500)) * 2, jnp.float32)
    key = jax.random.PRNGKey(1)
    greedy = np.argmax(np.asarray(logits), -1)
    for narrow in (DecodeConfig(4, method="sample", top_k=1), DecodeConfig(4, top_p=1e-6)):
        np.testing.assert_array_equal(np.asarray(sample_token(key, logits, narrow)), greedy)
    top5 = np.argsort(-np.asarray(logits), -1)[:, :5]
    drawn = np.asarray(sample_token(key, logits, DecodeConfig(4, top_k=5, temperature=3.0)))
    assert all(d in row for d, row in zip(drawn, top5))
    masked = logits.at[:, :250].set(-jnp.inf)
    assert (np.asarray(sample_token(key, masked, DecodeConfig(4, temperature=5.0))) >= 250).all()
