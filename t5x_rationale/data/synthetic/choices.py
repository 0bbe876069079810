"""The multiple-choice variant of the corpus: each row gets `choices`, its answer and near misses.

A near miss is a wrong answer a solver could plausibly reach: first the wrong answers of the
row's own negatives (`negative_labels`, each the result of one realistic mistake), then
arithmetic neighbours of the answer (off by one, two or ten, doubled, halved). The choices of
a row are distinct, the answer is among them, and their order is shuffled, so the answer's
position carries no information. Everything is drawn from a `Draw` seeded with
(seed, split, row index), so the variant is deterministic per seed, like the corpus itself.
"""

from __future__ import annotations

from typing import Sequence

from t5x_rationale.data.synthetic.sampling import Draw
from t5x_rationale.data.synthetic.splits import SPLITS

DEFAULT_NUM_CHOICES = 4
# Salts the choices' seed so they do not reuse the corpus stream of (seed, split).
_CHOICES_SALT = 7919


def _arithmetic_neighbours(answer: int) -> list[int]:
    """Wrong answers near `answer` (non-negative, in a fixed order)."""
    values = [answer + 1, answer - 1, answer + 10, answer - 10, answer + 2, answer - 2]
    values += [answer * 2, answer // 2, answer + 3, answer + 5, answer + 20, answer + 100]
    return [v for v in values if v >= 0 and v != answer]


def near_misses(answer: str, negative_labels: Sequence[str], draw: Draw, count: int) -> list[str]:
    """`count` distinct wrong answers: the negatives' answers first (in a random order), then
    shuffled arithmetic neighbours of a numeric answer. Raises ValueError when too few exist."""
    out: list[str] = []
    for label in draw.shuffled(negative_labels):
        if label != answer and label not in out and len(out) < count:
            out.append(label)
    if len(out) < count and answer.lstrip("-").isdigit():
        for value in draw.shuffled(_arithmetic_neighbours(int(answer))):
            text = str(value)
            if text != answer and text not in out and len(out) < count:
                out.append(text)
    if len(out) < count:
        raise ValueError(f"only {len(out)} near misses for answer {answer!r}; need {count}")
    return out


def with_choices(
    rows: Sequence[dict], *, seed: int, split: str, num_choices: int = DEFAULT_NUM_CHOICES
) -> list[dict]:
    """Copies of teacher-schema rows with `choices`: the label and `num_choices - 1` near
    misses, in a shuffled order (deterministic in seed, split and row index)."""
    if num_choices < 2:
        raise ValueError(f"num_choices must be at least 2, got {num_choices}")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    out = []
    for index, row in enumerate(rows):
        draw = Draw([int(seed), _CHOICES_SALT, SPLITS.index(split), index])
        wrong = near_misses(row["label"], row.get("negative_labels", ()), draw, num_choices - 1)
        out.append({**row, "choices": draw.shuffled([row["label"], *wrong])})
    return out
