"""Splits and rows: which split owns a question, rows of one split, and corpus files.

"train", "validation" and "test" are disjoint by question text: a question's split is fixed
by a SHA-256 hash of its text (90 / 5 / 5 per cent of the question space), and each split
keeps only the questions hashed to it, without duplicates.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Optional

from t5x_rationale.data.synthetic.mistakes import negative_rationales
from t5x_rationale.data.synthetic.problems import (
    DEFAULT_DIFFICULTY,
    Difficulty,
    DifficultyLike,
    Problem,
    as_difficulty,
)
from t5x_rationale.data.synthetic.rationales import correct_rationales, solve
from t5x_rationale.data.synthetic.sampling import Draw
from t5x_rationale.data.synthetic.stories import TEMPLATES

SPLITS = ("train", "validation", "test")
DEFAULT_SIZES = {"train": 20000, "validation": 500, "test": 500}
DEFAULT_SEED = 0
DEFAULT_NUM_RATIONALES = 3
DEFAULT_NUM_NEGATIVES = 2

# Share of the question space (per mille of the question hash) that each split owns.
_SPLIT_PER_MILLE = {"train": (0, 900), "validation": (900, 950), "test": (950, 1000)}
# Tries per requested row before `generate_split` gives up (only tiny question spaces hit it).
_TRIES_PER_ROW = 200


def split_of(question: str) -> str:
    """The split that owns a question text (a stable SHA-256 hash, the same in every process)."""
    per_mille = int.from_bytes(hashlib.sha256(question.encode("utf-8")).digest()[:8], "big") % 1000
    for split, (low, high) in _SPLIT_PER_MILLE.items():
        if low <= per_mille < high:
            return split
    raise AssertionError(per_mille)


def _draw_problem(draw: Draw, difficulty: Difficulty) -> Optional[Problem]:
    """One question of a random story type and operation count (None when the draw did not fit)."""
    num_ops = draw.int(difficulty.min_ops, difficulty.max_ops)
    template = TEMPLATES[draw.choice(tuple(TEMPLATES))]
    return template(draw, num_ops, difficulty.max_value)


def _row(
    row_id: str, problem: Problem, draw: Draw, num_rationales: int, num_negatives: int
) -> dict:
    """A teacher-schema row for a problem: its negatives are drawn before its rationales."""
    solutions = solve(problem)
    negatives, negative_labels = negative_rationales(solutions, problem.givens, draw, num_negatives)
    return {
        "id": row_id,
        "input": problem.question,
        "label": str(solutions[0].lines[-1].c),
        "rationales": correct_rationales(solutions, draw, num_rationales),
        "negatives": negatives,
        "negative_labels": negative_labels,
    }


def generate_split(
    split: str,
    *,
    num_examples: int,
    seed: int = DEFAULT_SEED,
    difficulty: DifficultyLike = DEFAULT_DIFFICULTY,
    num_rationales: int = DEFAULT_NUM_RATIONALES,
    num_negatives: int = DEFAULT_NUM_NEGATIVES,
) -> list[dict]:
    """`num_examples` rows of one split in the teacher-JSONL schema (deterministic in `seed`).

    Rows are generated one after another from one seeded stream, so a smaller `num_examples`
    gives a prefix of a larger one.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if num_rationales < 1 or num_negatives < 0:
        raise ValueError(
            "need num_rationales >= 1 and num_negatives >= 0, "
            f"got {num_rationales}, {num_negatives}"
        )
    difficulty = as_difficulty(difficulty)
    draw = Draw([int(seed), SPLITS.index(split)])
    seen: set[str] = set()
    rows: list[dict] = []
    for _ in range(_TRIES_PER_ROW * max(num_examples, 1)):
        if len(rows) == num_examples:
            return rows
        problem = _draw_problem(draw, difficulty)
        if problem is None or problem.question in seen or split_of(problem.question) != split:
            continue
        seen.add(problem.question)
        row_id = f"{split}-{len(rows):06d}"
        rows.append(_row(row_id, problem, draw, num_rationales, num_negatives))
    if len(rows) < num_examples:
        raise RuntimeError(
            f"only {len(rows)} distinct {split} questions found for {difficulty}; "
            f"asked for {num_examples}"
        )
    return rows


def plain_text(row: dict, rationale_index: int = 0) -> str:
    """The prose view of a row on one line: question, rationale and answer (for LM training)."""
    rationale = row["rationales"][rationale_index]
    if "answer is" not in rationale:
        rationale = f"{rationale} The answer is {row['label']}."
    return " ".join(f"{row['input']} {rationale}".split())


def answer_text(row: dict) -> str:
    """The direct-answer view on one line: question and answer, no rationale (the text where
    the computation is not spelled out: what Quiet-STaR's thoughts can supply)."""
    return " ".join(f"{row['input']} The answer is {row['label']}.".split())


def write_corpus(
    out_dir: str | os.PathLike,
    *,
    sizes: Optional[dict[str, int]] = None,
    seed: int = DEFAULT_SEED,
    difficulty: DifficultyLike = DEFAULT_DIFFICULTY,
) -> dict[str, str]:
    """Writes `{split}.jsonl` (rows) and `{split}.txt` (plain-text view) per split.

    Returns the written paths keyed by file name ("train.jsonl", "train.txt", ...).
    """
    sizes = dict(DEFAULT_SIZES if sizes is None else sizes)
    os.makedirs(out_dir, exist_ok=True)
    paths: dict[str, str] = {}
    for split, size in sizes.items():
        rows = generate_split(split, num_examples=size, seed=seed, difficulty=difficulty)
        jsonl = os.path.join(out_dir, f"{split}.jsonl")
        with open(jsonl, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(row, sort_keys=True) + "\n" for row in rows)
        txt = os.path.join(out_dir, f"{split}.txt")
        with open(txt, "w", encoding="utf-8") as f:
            f.writelines(plain_text(row) + "\n" for row in rows)
        paths[f"{split}.jsonl"], paths[f"{split}.txt"] = jsonl, txt
    return paths
