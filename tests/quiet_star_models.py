"""Small random Quiet-STaR models shared by the Quiet-STaR tests."""

import flax.linen as nn
import jax
import jax.numpy as jnp

from t5x_rationale.architectures import QuietStarConfig, build_model, get_preset


def tiny_config(**overrides) -> QuietStarConfig:
    """decoder-tiny wrapped as a QuietStarConfig; `overrides` go to the decoder."""
    return QuietStarConfig(get_preset("decoder-tiny", **overrides))


def tiny_params(config, seed=0, mixing_random=False):
    """Flax-initialised params; `mixing_random` gives the mixing head trained-looking weights."""
    tokens = jnp.ones((1, 8), jnp.int32)
    params = nn.unbox(build_model(config).init(jax.random.PRNGKey(seed), tokens)["params"])
    if mixing_random:  # its last layer starts at zero, which would hide the thought entirely
        keys = iter(jax.random.split(jax.random.PRNGKey(seed + 1), 8))
        params["mixing_head"] = jax.tree.map(lambda a: 0.3 * jax.random.normal(next(keys), a.shape),
                                             params["mixing_head"])
    return params
