"""Step counts, random tokens and the float32 comparison shared by the Quiet-STaR tests."""

import jax.numpy as jnp
import numpy as np

N_A, N_T = 6, 3  # 3 sampled thought tokens, 3 talk tokens scored: small but every step kind


def _tokens(n, t, seed=0, vocab=256):
    return jnp.asarray(np.random.default_rng(seed).integers(7, vocab, (n, t)), jnp.int32)


def _close(got, want, err_msg="", floor=0.0):
    """float32 agreement: 1e-5 of the tensor's largest magnitude (different summation
    orders), scaled per tensor so small tensors are held to the same relative standard;
    `floor` puts a lower bound on that magnitude (see its one use)."""
    want = np.asarray(want)
    scale = max(float(np.abs(want).max()) if want.size else 0.0, floor)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * scale + 1e-30, err_msg=err_msg)
