"""Self-adversarial negatives: every N-th step, the student of K steps earlier samples
rationales for the step's candidate questions, and those whose answer disagrees with the
gold label join the step's candidates as negatives (docs/methods.md 3.1).

Sampling runs on the mesh with the KV-cached sampler (`inference.decoding.decode`) from the
ring's lagged params (`QcrdTrainer.lagged_params`), with the key
fold_in(fold_in(state.rng, step), SAMPLE_TAG): a resumed run draws the same samples. The
answers are read on the host (`disagrees`, e.g. `extract_answer` on decoded text). Every
batch gets the same `num_samples` extra slots, masked out on the other steps and for the
samples that agree with the label or state no answer, so the step compiles once.
"""

from __future__ import annotations

from typing import Callable, Optional

import jax
import numpy as np
from jax.experimental import multihost_utils

from t5x_rationale.inference.decoding import DecodeConfig, decode
from t5x_rationale.qcrd.trainer import QcrdTrainer, QcrdTrainState

SAMPLE_TAG = 0x5A3F
# (sampled target tokens [L], gold label tokens [L']) -> True (a negative), False (agrees)
# or None (no answer stated: not used)
Disagrees = Callable[[np.ndarray, np.ndarray], Optional[bool]]

_SLOT_KEYS = (
    "candidate_input_tokens",
    "candidate_target_tokens",
    "candidate_loss_weights",
    "candidate_mask",
    "candidate_is_positive",
)


class SelfAdversarialNegatives:
    """`prepare(state, host_batch)` for `train_loop`: appends the sampled negative slots.

    Args:
      trainer: the QCRD trainer (its model, ring, mesh and settings).
      disagrees: reads a sample's answer against the label.
      eos_id: ends a sample.
    """

    def __init__(self, trainer: QcrdTrainer, disagrees: Disagrees, *, eos_id: int = 1):
        self.trainer, self.disagrees = trainer, disagrees
        self.settings = trainer.settings
        self.eos_id = eos_id
        self.counts = {"sampled": 0, "kept": 0, "agreed": 0, "no_answer": 0}

    def sampling_step(self, step: int) -> bool:
        every = self.settings.sample_every
        return bool(every) and step % every == 0

    def __call__(self, state: Optional[QcrdTrainState], batch: dict[str, np.ndarray]) -> dict:
        """The host batch with `num_samples` more candidate slots (masked unless sampled;
        `state` None: never sampled, the shapes of every step's batch)."""
        num = self.settings.sampled_slots
        if not num:
            return batch
        rows, _, length = batch["candidate_target_tokens"].shape
        slots = np.zeros((rows, num, length), np.int32)
        keep = np.zeros((rows, num), np.int32)
        weights = np.zeros((rows, num, length), np.float32)
        if state is not None and self.sampling_step(int(state.step)):
            slots = self.sample(state, batch["candidate_encoder_input_tokens"], length)
            keep = self._keep(slots, batch["candidate_label_tokens"])
            slots = slots * keep[..., None]
            weights = sample_weights(slots, self.eos_id) * keep[..., None]
        return _append_slots(batch, slots, keep, weights)

    def sample(self, state: QcrdTrainState, questions: np.ndarray, length: int) -> np.ndarray:
        """[rows, num_samples, length] samples of this host's questions from the lagged params."""
        trainer, num = self.trainer, self.settings.num_samples
        config = DecodeConfig(
            max_decode_length=length,
            method="sample",
            temperature=self.settings.temperature,
            eos_id=self.eos_id,
        )
        repeated = np.repeat(questions, num, axis=0)
        rows = trainer.partitioner.host_batch_to_global({"q": repeated})["q"]
        lagged = trainer.lagged_params(state)
        rng = jax.random.fold_in(jax.random.fold_in(state.rng, state.step), SAMPLE_TAG)
        key = "encoder_input_tokens"  # the question, or a decoder-only student's prompt
        if trainer.model.config.architecture != "encoder_decoder":
            key = "decoder_prompt_tokens"
        with trainer.context():
            tokens = decode(trainer.model, lagged, {key: rows}, config, rng=rng)
        tokens = tokens.tokens
        if jax.process_count() > 1:
            mine = trainer.partitioner.host_rows(tokens.shape[0])
            tokens = multihost_utils.process_allgather(tokens, tiled=True)[mine]
        return np.asarray(tokens).reshape(questions.shape[0], num, length)

    def _keep(self, samples: np.ndarray, labels: np.ndarray) -> np.ndarray:
        keep = np.zeros(samples.shape[:2], np.int32)
        for row in range(samples.shape[0]):
            for j in range(samples.shape[1]):
                verdict = self.disagrees(samples[row, j], labels[row])
                self.counts["sampled"] += 1
                key = {True: "kept", False: "agreed", None: "no_answer"}[verdict]
                self.counts[key] += 1
                keep[row, j] = int(verdict is True and bool(samples[row, j].any()))
        return keep

    def stats(self) -> dict[str, float]:
        """Sample counts since this process started (`kept` ones became negatives)."""
        return {f"self_adversarial/{k}": float(v) for k, v in self.counts.items()}


def sample_weights(samples: np.ndarray, eos_id: Optional[int]) -> np.ndarray:
    """float32 [..., L]: 1 on a sample's tokens up to and including its first EOS (all of
    them without one), 0 on the zeros decoding writes after it; a token at id 0 counts."""
    if eos_id is None:
        return np.ones(samples.shape, np.float32)
    is_eos = samples == eos_id
    after_eos = np.cumsum(is_eos, axis=-1) - is_eos > 0
    return (~after_eos).astype(np.float32)


def _append_slots(batch: dict, samples: np.ndarray, keep: np.ndarray, weights) -> dict:
    """The batch with `samples` [B, S, L] and their `weights` appended as negative slots."""
    extra = {
        "candidate_input_tokens": np.pad(samples[:, :, :-1], ((0, 0), (0, 0), (1, 0))),
        "candidate_target_tokens": samples,
        "candidate_loss_weights": weights,
        "candidate_mask": keep,
        "candidate_is_positive": np.zeros_like(keep),
    }
    out = dict(batch)
    for key in _SLOT_KEYS:
        out[key] = np.concatenate([batch[key], extra[key].astype(batch[key].dtype)], axis=1)
    if "candidate_scores" in batch:
        raise ValueError("precomputed candidate_scores cannot take sampled slots")
    return out
