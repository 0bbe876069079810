"""The settings of Quiet-STaR thinking (`ThinkingSpec`) and a forward's per-batch inputs
(`Context`).

`ThinkingSpec` is the one owner of n_a, n_t, P, the temperatures and the implementation: gin
binds it once (`ThinkingSpec.num_ahead = 12`, ...) and the entry points hand the same object
to the loss, the FLOP count, thought scoring and thought decoding.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import jax

IMPLEMENTATIONS = ("streams", "dense_mask")
# What a streams step can record for its backward instead of recomputing it. Per layer and
# step, a projection output costs rows x length x emb_dim values (query, out, down) or
# x mlp_dim (gate, up); "attention" is the attention output (x emb_dim) and its per-row
# log-normaliser, so the backward skips the attention forward.
RECORDABLE = ("query", "attention", "out", "gate", "up", "down")


@dataclasses.dataclass(frozen=True)
class ThinkingSpec:
    """Static settings of Quiet-STaR thinking (reference defaults)."""

    num_ahead: int = 12  # n_a: base step + start + sampled thought tokens + end
    num_talk: int = 4  # n_t: true future tokens scored
    sample_temperature: float = 1.0
    score_temperature: float = 3.0  # the policy term's log-probabilities use this
    implementation: str = "streams"
    collect_logits: bool = False  # also return every step's logits (tests, inspection)
    # streams: what each step keeps for the backward instead of recomputing it (projection
    # outputs, the attention output; keys and values always come from the buffer); RECORDABLE.
    record: tuple[str, ...] = ("query", "attention", "out", "down")
    num_thoughts: int = 2  # P: thoughts per position (each row repeated P times, adjacent)

    def __post_init__(self):
        object.__setattr__(self, "record", tuple(self.record))  # gin binds lists
        if self.num_ahead < 4:
            raise ValueError(
                "num_ahead must be >= 4 (base, start, >= 1 thought token, end), "
                f"got {self.num_ahead}"
            )
        if self.num_thoughts < 1:
            raise ValueError(f"num_thoughts must be >= 1, got {self.num_thoughts}")
        if self.num_talk < 1:
            raise ValueError(f"num_talk must be >= 1, got {self.num_talk}")
        if self.implementation not in IMPLEMENTATIONS:
            raise ValueError(f"implementation {self.implementation!r} not in {IMPLEMENTATIONS}")
        unknown = set(self.record) - set(RECORDABLE)
        if unknown:
            raise ValueError(
                f"record: unknown name(s) {sorted(unknown)}; expected some of {RECORDABLE}"
            )
        if self.sample_temperature < 0 or self.score_temperature <= 0:
            raise ValueError(
                "sample_temperature must be >= 0 (0: argmax) and score_temperature positive"
            )

    @property
    def num_steps(self) -> int:
        """Steps after the base step (F - 1): the number of stream slots."""
        return self.num_ahead + self.num_talk - 2

    @property
    def num_thought_tokens(self) -> int:
        return self.num_ahead - 3


@dataclasses.dataclass(frozen=True)
class Context:
    """Per-batch inputs of the thinking steps (integer data, not differentiated)."""

    targets: jax.Array  # [N, T] y: the true next token of each position
    valid: jax.Array  # [N, T] bool: y[i] is a real target (weight > 0)
    segment_ids: Optional[jax.Array]  # [N, T] packed documents, or None
    rng: jax.Array  # sampling key; step k uses fold_in(rng, k)
    forced_thoughts: Optional[jax.Array] = None  # [N, T, n_a - 3] ids to use instead of sampling


jax.tree_util.register_dataclass(
    Context,
    data_fields=["targets", "valid", "segment_ids", "rng", "forced_thoughts"],
    meta_fields=[],
)
