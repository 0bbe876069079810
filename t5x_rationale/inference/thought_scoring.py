"""Per-token scores of text under a Quiet-STaR model: base vs thought-mixed log-probabilities.

`ThoughtScorer` restores a `QuietStarLM` checkpoint onto a mesh and runs the token-parallel
forward (P = 1, thoughts at the spec's `sample_temperature`, 0 = argmax) over right-padded rows of
target tokens. For every position i, predicting y[i]:

  base_logp[i]      log p_base(y[i] | y[..i-1])
  mixed_logp[i]     log p_mixed(y[i]): after position i's thought, mixed by the head; this is
                    what generation with thoughts (n_t = 1) uses
  mixing_weight[i]  the head's w for that prediction
  thoughts[i]       the thought's sampled token ids (num_ahead - 3)
  delta_future[i]   sum over the n_t talk steps of log p_mixed(y[i+s]) - log p_base(y[i+s]):
                    how much the thought changed the log-probability of the true next tokens
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from t5x_rationale.architectures import build_model
from t5x_rationale.architectures.quiet_star_lm import QuietStarConfig
from t5x_rationale.quiet_star.spec import ThinkingSpec
from t5x_rationale.quiet_star.terms import quiet_star_terms
from t5x_rationale.runtime.checkpoints import restore_params
from t5x_rationale.runtime.partitioning import Partitioner
from t5x_rationale.runtime.trainer import abstract_params


@dataclasses.dataclass(frozen=True)
class ThoughtScores:
    """numpy arrays [N, T] (thoughts [N, T, num_ahead - 3]); `valid` marks real tokens."""

    targets: np.ndarray
    valid: np.ndarray
    base_logp: np.ndarray
    mixed_logp: np.ndarray
    mixing_weight: np.ndarray
    thoughts: np.ndarray
    delta_future: np.ndarray


def score_rows(
    config: QuietStarConfig,
    params: Any,
    targets: jax.Array,
    weights: jax.Array,
    *,
    spec: ThinkingSpec,
    rng: jax.Array,
) -> dict:
    """The per-position scores above (jnp arrays) of right-padded target rows [N, T] whose
    real tokens `weights` [N, T] marks, one thought per position (`spec.num_thoughts` is not
    used) sampled at `spec.sample_temperature`."""
    spec = dataclasses.replace(spec, num_thoughts=1)
    num_ahead = spec.num_ahead
    inputs = jnp.pad(targets[:, :-1], ((0, 0), (1, 0)))
    batch = {
        "decoder_target_tokens": targets,
        "decoder_input_tokens": inputs,
        "decoder_loss_weights": weights.astype(jnp.float32),
    }
    terms = quiet_star_terms(config, spec, params, batch, rng, clip_advantage=False)
    return {
        "base_logp": terms["base_logp"],
        "mixed_logp": terms["talk_logp"][0],
        "mixing_weight": terms["mixing_weight"][num_ahead - 2],
        "thoughts": jnp.moveaxis(terms["next_token"][: num_ahead - 3], 0, -1),
        "delta_future": terms["rewards"],
    }


class ThoughtScorer:
    """A restored Quiet-STaR checkpoint that scores batches of token rows.

    Args:
      model_config: the `QuietStarConfig` the checkpoint was trained with.
      checkpoint_path: a run's `checkpoints/` directory (latest step) or one step directory.
      partitioner: mesh + rules; params are restored sharded onto it.
      spec: the thinking settings of training; thoughts are sampled at its
        `sample_temperature` (0: argmax) and `num_talk` true tokens scored.
    """

    def __init__(
        self,
        model_config: QuietStarConfig,
        checkpoint_path: str,
        partitioner: Partitioner,
        *,
        spec: ThinkingSpec,
    ):
        if model_config.architecture != "quiet_star":
            raise TypeError(
                f"thought scoring needs a Quiet-STaR model (model_config = @quiet_star_config()), "
                f"got a {model_config.architecture} model"
            )
        self.config, self.partitioner, self.spec = model_config, partitioner, spec
        model = build_model(model_config)
        shape_batch = {"decoder_input_tokens": np.ones((partitioner.batch_shards, 8), np.int32)}
        self.params, self.step = restore_params(
            checkpoint_path, abstract_params(model, partitioner, shape_batch)
        )
        self._score = jax.jit(functools.partial(score_rows, model_config, spec=spec))

    def score(
        self, targets: np.ndarray, rng: Optional[jax.Array] = None, lengths=None
    ) -> ThoughtScores:
        """Scores right-padded target rows [N, T] of `lengths` [N] tokens each (by default up
        to the last non-zero token, which is wrong where id 0 is a text token ending a row),
        the same rows on every process."""
        targets = np.asarray(targets, np.int32)
        rows, width = targets.shape
        columns = np.arange(width)
        if lengths is None:
            lengths = np.max(np.where(targets != 0, columns + 1, 0), axis=1)
        valid = columns[None, :] < np.asarray(lengths)[:, None]
        shards = self.partitioner.batch_shards
        extra = np.zeros((-rows % shards, width), np.int32)
        host = self.partitioner.host_rows(rows + len(extra))
        batch = self.partitioner.host_batch_to_global(
            {
                "targets": np.concatenate([targets, extra])[host],
                "weights": np.concatenate([valid.astype(np.int32), extra])[host],
            }
        )
        rng = jax.random.PRNGKey(0) if rng is None else rng
        with self.partitioner.context():
            out = self._score(self.params, batch["targets"], batch["weights"], rng=rng)
        out = {
            k: np.asarray(multihost_utils.process_allgather(v, tiled=True))[:rows]
            for k, v in out.items()
        }
        return ThoughtScores(targets=targets, valid=valid, **out)
