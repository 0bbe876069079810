"""Seeded randomness for the generator, and the number ranges the stories sample from.

All randomness comes from numpy Generators seeded with explicit integers, so a seed gives
the same rows, byte for byte, in every process.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

_BANKNOTES = (10, 20, 50, 100, 200, 500, 1000, 2000)


class Draw:
    """Scalar draws from one seeded numpy Generator (buffered: scalar numpy calls are slow)."""

    def __init__(self, seed_words: Sequence[int]):
        self._rng = np.random.default_rng([int(w) for w in seed_words])
        self._buffer: list[float] = []  # consumed from the end

    def uniform(self) -> float:
        """A float in [0, 1)."""
        if not self._buffer:
            self._buffer = self._rng.random(4096).tolist()[::-1]
        return self._buffer.pop()

    def int(self, low: int, high: int) -> int:
        """An integer in [low, high], both included."""
        return low + int(self.uniform() * (high - low + 1))

    def choice(self, options: Sequence):
        """One element of a non-empty sequence."""
        return options[int(self.uniform() * len(options))]

    def chance(self, probability: float) -> bool:
        """True with the given probability."""
        return self.uniform() < probability

    def shuffled(self, items: Sequence) -> list:
        """A new list with the items in random order (Fisher-Yates)."""
        out = list(items)
        for i in range(len(out) - 1, 0, -1):
            j = int(self.uniform() * (i + 1))
            out[i], out[j] = out[j], out[i]
        return out


def small(draw: Draw, max_value: int) -> int:
    """A small count (rows, batches, hours): 2 .. max(3, max_value // 4)."""
    return draw.int(2, max(3, max_value // 4))


def medium(draw: Draw, max_value: int) -> int:
    """A medium count or price: 2 .. max(5, max_value // 2)."""
    return draw.int(2, max(5, max_value // 2))


def large(draw: Draw, max_value: int) -> int:
    """A count, price or rate up to max_value."""
    return draw.int(3, max_value)


def banknote(draw: Draw, at_least: int) -> int:
    """A banknote of at least `at_least` dollars (the smallest such note or the next one)."""
    notes = [n for n in _BANKNOTES if n >= at_least] or [((at_least // 1000) + 1) * 1000]
    return draw.choice(notes[:2])


def divisors(n: int, low: int, high: int) -> list[int]:
    """Divisors of n within [low, high]."""
    return [d for d in range(low, high + 1) if n % d == 0]
