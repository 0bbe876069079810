"""Small random Quiet-STaR models shared by the Quiet-STaR tests."""

import flax.linen as nn
import jax
import jax.numpy as jnp

from t5x_rationale.architectures import QuietStarConfig, build_model, get_preset


def tiny_config(**overrides) -> QuietStarConfig:
    """decoder-tiny wrapped as a QuietStarConfig; `overrides` go to the decoder."""
    return QuietStarConfig(get_preset("decoder-tiny", **overrides))


# Both of the decoder's options that change its attention inputs: Qwen2's q/k/v biases and
# Llama 3's RoPE scaling (head_dim 8 at theta 100: one frequency kept, one blended, two divided).
BIASES_AND_LLAMA3_ROPE = dict(
    attention_bias=True, rope_theta=100.0, rope_scaling=("llama3", 8.0, 1.0, 4.0, 32)
)


def tiny_params(config, seed=0, mixing_random=False):
    """Flax-initialised params; `mixing_random` gives the mixing head trained-looking weights.
    q/k/v biases (which start at zero) are drawn at random so that they matter."""
    tokens = jnp.ones((1, 8), jnp.int32)
    params = nn.unbox(build_model(config).init(jax.random.PRNGKey(seed), tokens)["params"])
    bias_keys = iter(jax.random.split(jax.random.PRNGKey(seed + 2), 64))
    params = jax.tree_util.tree_map_with_path(
        lambda path, a: (
            0.5 * jax.random.normal(next(bias_keys), a.shape) if path[-1].key == "bias" else a
        ),
        params,
    )
    if mixing_random:  # its last layer starts at zero, which would hide the thought entirely
        keys = iter(jax.random.split(jax.random.PRNGKey(seed + 1), 8))
        params["mixing_head"] = jax.tree.map(
            lambda a: 0.3 * jax.random.normal(next(keys), a.shape), params["mixing_head"]
        )
    return params


def thought_ids_likeliest(config, params):
    """Params whose LM head makes a thought id the argmax nearly everywhere.

    Their logit columns become +-50 * sum(h), so one of the two dominates every position.
    """
    kernel = params["decoder"]["logits_dense"]["kernel"]
    start, end = config.thought_token_ids
    decoder = dict(
        params["decoder"],
        logits_dense=dict(
            params["decoder"]["logits_dense"],
            kernel=kernel.at[:, start].set(50.0).at[:, end].set(-50.0),
        ),
    )
    return dict(params, decoder=decoder)
