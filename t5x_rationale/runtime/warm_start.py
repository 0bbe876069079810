"""Starting a run from another run's weights (`train.init_from`): params only, step 0.

The checkpoint's params replace the fresh ones; the optimizer state, step and data position
stay fresh. A Quiet-STaR model may start from a plain decoder LM's checkpoint: its decoder
params come from the checkpoint, the thought embeddings are re-derived from the restored
token embedding (as a fresh model derives them) and the mixing head keeps its zero-output
init, so the mixed prediction starts exactly at the restored LM's.
"""

from __future__ import annotations

import jax
import numpy as np

from t5x_rationale.architectures.quiet_star_lm import thought_init
from t5x_rationale.runtime.checkpoints import restore_params
from t5x_rationale.runtime.trainer import TrainState

THOUGHT_PARAMS = ("start_thought", "end_thought")
QUIET_STAR_ADDED = THOUGHT_PARAMS + ("mixing_head",)


def warm_start(state: TrainState, checkpoint: str, model_config) -> TrainState:
    """`state` with its params taken from `checkpoint` (a run's checkpoints or a step dir)."""
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state.params
    )
    thinks = model_config.architecture == "quiet_star"
    restored, _ = restore_params(checkpoint, abstract, optional=QUIET_STAR_ADDED if thinks else ())
    return with_params(state, restored, model_config)


def with_params(state: TrainState, restored: dict, model_config) -> TrainState:
    """`state` with the top-level params in `restored` replaced; a Quiet-STaR model lacking
    its thought params gets them derived from the restored token embedding."""
    params = dict(state.params, **restored)
    thinks = model_config.architecture == "quiet_star"
    missing = [name for name in THOUGHT_PARAMS if thinks and name not in restored]
    if missing:
        value = np.asarray(thought_init(restored["token_embedder"]["embedding"], model_config))
        # One buffer per param (from the host copy): the train step donates each of them.
        params.update({n: jax.device_put(value, state.params[n].sharding) for n in missing})
    return state.replace(params=params)
