"""Step counts, random tokens and the float32 comparison shared by the Quiet-STaR tests."""

import jax.numpy as jnp
import numpy as np

N_A, N_T = 6, 3  # 3 sampled thought tokens, 3 talk tokens scored: small but every step kind


def _tokens(n, t, seed=0, vocab=256):
    return jnp.asarray(np.random.default_rng(seed).integers(7, vocab, (n, t)), jnp.int32)


def _close(got, want, err_msg=""):
    """float32 agreement: 1e-5 of the largest magnitude (different summation orders)."""
    want = np.asarray(want)
    np.testing.assert_allclose(
        got, want, rtol=1e-5, atol=1e-5 * max(float(np.abs(want).max()), 1.0), err_msg=err_msg
    )
