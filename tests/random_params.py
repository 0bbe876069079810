"""Random model parameters for reference tests, drawn with numpy from the model's shapes."""

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax.core import meta


def random_params(model, seed=0, **inputs):
    """Float32 params with the model's tree and shapes, drawn with numpy (no Flax init is compiled).

    Kernels ~ N(0, 1/fan_in), embeddings and relative-bias tables ~ N(0, 1), RMSNorm scales
    1 + 0.3 N(0, 1) so that they matter. Scanned layers (a leading `layers` axis) are handled.
    """
    shapes = meta.unbox(
        jax.eval_shape(
            model.init, jax.random.PRNGKey(0), **{k: jnp.asarray(v) for k, v in inputs.items()}
        )["params"]
    )
    rng = np.random.default_rng(seed)

    def draw(path, s):
        name, parent = path[-1].key, path[-2].key
        if name == "scale":
            value = 1.0 + 0.3 * rng.standard_normal(s.shape)
        elif name == "kernel":
            layer_axis = 1 if any(getattr(k, "key", None) == "layers" for k in path) else 0
            in_dims = s.shape[layer_axis : layer_axis + (2 if parent == "out" else 1)]
            value = rng.standard_normal(s.shape) / math.sqrt(math.prod(in_dims))
        else:
            value = rng.standard_normal(s.shape)
        return jnp.asarray(value, jnp.float32)

    return jax.tree_util.tree_map_with_path(draw, shapes)
