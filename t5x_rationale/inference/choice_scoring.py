"""Multiple-choice accuracy of a checkpoint: each row's chosen answer against its label.

The choice itself is made by a function passed in, `predict_fn(model, params, batch) ->
(predicted [B], counted [B] bool)`, so the score is exactly the training objective's (the
entry point passes `objectives.pinto.choice_predictions`: the argmax of the length-normalised
log-likelihood that PINTO's loss uses); this module restores the params, shards the batches
and counts. Batches are host-local NumPy dicts with `choice_label` (a `ChoicesConverter`
stream read once, unshuffled); the last, short one is padded with rows whose label is -1,
which no `predict_fn` counts.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterable

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from t5x_rationale.architectures import build_model
from t5x_rationale.runtime.checkpoints import restore_params
from t5x_rationale.runtime.partitioning import Partitioner
from t5x_rationale.runtime.trainer import abstract_params

PredictFn = Callable[[Any, Any, dict], tuple[jax.Array, jax.Array]]


@dataclasses.dataclass(frozen=True)
class ChoiceAccuracy:
    """Correct and counted rows, and the rows read (counted or skipped)."""

    correct: int
    counted: int
    rows: int

    @property
    def accuracy(self) -> float:
        """Percent of counted rows whose chosen answer is the label (0 when none counted)."""
        return 100.0 * self.correct / self.counted if self.counted else 0.0


class ChoiceScorer:
    """Restores a model's params and counts correct choices over batches.

    Args:
      model_config: the architecture the checkpoint was trained with (encoder-decoder).
      checkpoint_path: a run's `checkpoints/` directory (latest step) or one step directory.
      partitioner: mesh + rules; params are restored sharded onto it.
      predict_fn: `(model, params, batch) -> (predicted [B], counted [B])`.
      batch_size: global rows per batch.
      input_length: the encoder input length of the batches (sizes the restore target).
    """

    def __init__(
        self,
        model_config,
        checkpoint_path: str,
        partitioner: Partitioner,
        predict_fn: PredictFn,
        *,
        batch_size: int,
        input_length: int,
    ):
        partitioner.check_global_batch_size(batch_size)
        self.partitioner, self.batch_size = partitioner, batch_size
        self.model = build_model(model_config)
        ones = np.ones((batch_size, input_length), np.int32)
        shape_batch = {"decoder_input_tokens": ones}  # a decoder-only student's
        if model_config.architecture == "encoder_decoder":
            shape_batch = {"encoder_input_tokens": ones, "decoder_input_tokens": ones[:, :1]}
        self.params, self.step = restore_params(
            checkpoint_path, abstract_params(self.model, partitioner, shape_batch)
        )

        def counts(params, batch):
            predicted, counted = predict_fn(self.model, params, batch)
            right = counted & (predicted == batch["choice_label"].astype(predicted.dtype))
            return jnp.sum(right), jnp.sum(counted)

        self._counts = jax.jit(counts)

    def score(self, batches: Iterable[dict[str, np.ndarray]]) -> ChoiceAccuracy:
        """Correct / counted over every row of `batches` (this host's rows of each)."""
        host_rows = self.batch_size // jax.process_count()
        correct = counted = rows = 0
        for batch in batches:
            n = len(batch["choice_label"])
            padded = {k: _pad_rows(v, host_rows, k == "choice_label") for k, v in batch.items()}
            with self.partitioner.context():
                right, used = self._counts(
                    self.params, self.partitioner.host_batch_to_global(padded)
                )
            correct, counted = correct + int(right), counted + int(used)
            rows += n
        return ChoiceAccuracy(correct, counted, _global_sum(rows))


def _pad_rows(values: np.ndarray, rows: int, is_label: bool) -> np.ndarray:
    """`values` padded to `rows` rows: copies of its first row, or -1 for the label."""
    missing = rows - len(values)
    if missing <= 0:
        return values
    fill = np.full((missing,) + values.shape[1:], -1, values.dtype) if is_label else None
    fill = np.repeat(values[:1], missing, 0) if fill is None else fill
    return np.concatenate([values, fill])


def _global_sum(value: int) -> int:
    if jax.process_count() == 1:
        return value
    return int(np.sum(multihost_utils.process_allgather(np.asarray([value]))))
