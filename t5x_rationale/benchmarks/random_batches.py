"""Deterministic random-token batches for tests and benchmarks, with a resumable position.

Batch k depends only on (seed, k), so an iterator restored to position k yields exactly what
an uninterrupted one would have.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np


class RandomBatches(Iterator[dict]):
    """Endless batches of random tokens in [2, vocab_size) with trailing padding.

    Rows carry a random number of real target tokens (at least half the length); the rest is
    padding with weight 0, so losses see ragged rows. Encoder inputs are produced when
    `input_length > 0`; `task_ids` adds per-token `decoder_task_ids` (a short label span,
    then a rationale span) for the multi-task objectives.
    """

    def __init__(
        self,
        *,
        vocab_size: int,
        batch_size: int,
        target_length: int,
        input_length: int = 0,
        seed: int = 0,
        position: int = 0,
        task_ids: bool = False,
    ):
        if vocab_size < 3:
            raise ValueError(f"vocab_size must be >= 3, got {vocab_size}")
        self.vocab_size, self.batch_size = vocab_size, batch_size
        self.target_length, self.input_length = target_length, input_length
        self.seed, self.position, self.task_ids = seed, position, task_ids

    def get_state(self) -> dict:
        return {"position": self.position, "seed": self.seed}

    def set_state(self, state: dict) -> None:
        if state.get("seed", self.seed) != self.seed:
            raise ValueError(
                f"data state has seed {state['seed']}, this iterator uses seed {self.seed}"
            )
        self.position = int(state["position"])

    def __next__(self) -> dict:
        rng = np.random.default_rng([self.seed, self.position])
        self.position += 1
        b, t = self.batch_size, self.target_length
        targets = rng.integers(2, self.vocab_size, (b, t), dtype=np.int32)
        lengths = rng.integers(max(1, t // 2), t + 1, (b,))
        weights = (np.arange(t)[None] < lengths[:, None]).astype(np.float32)
        targets = targets * weights.astype(np.int32)
        batch = {
            "decoder_target_tokens": targets,
            "decoder_input_tokens": np.pad(targets[:, :-1], ((0, 0), (1, 0))),
            "decoder_loss_weights": weights,
        }
        if self.task_ids:  # a label span (task 1) then a rationale span (task 2) in every row
            label_tokens = rng.integers(1, max(2, t // 8), (b, 1))
            batch["decoder_task_ids"] = np.where(np.arange(t)[None] < label_tokens, 1, 2).astype(
                np.int32
            )
        if self.input_length:
            s = self.input_length
            inputs = rng.integers(2, self.vocab_size, (b, s), dtype=np.int32)
            in_len = rng.integers(max(1, s // 2), s + 1, (b,))
            batch["encoder_input_tokens"] = inputs * (np.arange(s)[None] < in_len[:, None])
        return batch
