"""The students of `compare --students`: how each one trains and is evaluated, and its table.

Each student is a run file of `configs/runs/` trained with the same steps, batch rows and
model (the run files share the tiny T5 of `runs/distill_base.gin`), then evaluated on the
test split by `evaluate`. Two numbers are read from `evaluate`'s JSON files:

- accuracy, from the task the student answers at inference: the `predict:` head for
  label-only, step-by-step and QCRD (`_label`), the answer after the rationale for
  chain-of-thought (`_cot`) and SCOTT (`_factual`), the chosen answer for PINTO
  (`_choices`, 4 choices: chance is 25%);
- counterfactual consistency (docs/methods.md 4.1), from the task where the student writes a
  rationale and then its answer: step-by-step's rationale head (`_rationale`), QCRD's
  rationale head, which reads the bare question as in its candidate rows (`_cot`'s prompt,
  with the `rationale` prefix format), and the accuracy task for the others. It is null for
  label-only (no rationale) and PINTO (the rationale is an input, not an output).
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
from typing import Optional, Sequence

ACCURACY, CONSISTENCY = "accuracy", "consistency"


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """One `evaluate` call: the task (corpus + suffix), the JSON key read, extra bindings."""

    suffix: str
    key: str
    bindings: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Student:
    """A student: its table name, run file, and where accuracy and consistency come from."""

    name: str
    gin_file: str
    accuracy: Evaluation
    consistency: Evaluation

    def evaluations(self) -> tuple[Evaluation, ...]:
        """The distinct `evaluate` calls (one when both numbers come from the same task)."""
        if self.consistency.suffix == self.accuracy.suffix:
            return (self.accuracy,)
        return (self.accuracy, self.consistency)


_CC = "counterfactual_consistency"
_FULL_RATIONALE = ("DecodeConfig.max_decode_length=160",)  # the rationale head's own length
STUDENTS = {
    "label-only": Student(
        "label-only",
        "runs/label_only.gin",
        Evaluation("_label", "answer_accuracy"),
        Evaluation("_label", _CC),
    ),
    "step-by-step": Student(
        "step-by-step",
        "runs/distill_step_by_step.gin",
        Evaluation("_label", "answer_accuracy"),
        Evaluation("_rationale", _CC, _FULL_RATIONALE),
    ),
    "cot": Student(
        "chain-of-thought",
        "runs/distill_cot.gin",
        Evaluation("_cot", "answer_accuracy"),
        Evaluation("_cot", _CC),
    ),
    "qcrd": Student(
        "QCRD",
        "runs/qcrd.gin",
        Evaluation("_label", "answer_accuracy"),
        Evaluation("_cot", _CC, _FULL_RATIONALE + ("evaluate.faithfulness_format='rationale'",)),
    ),
    "scott": Student(
        "SCOTT",
        "runs/scott.gin",
        Evaluation("_factual", "answer_accuracy"),
        Evaluation("_factual", _CC),
    ),
    "pinto": Student(
        "PINTO (4 choices)",
        "runs/pinto.gin",
        Evaluation("_choices", "choice_accuracy"),
        Evaluation("_choices", _CC),
    ),
}


def parse_students(text: str) -> list[str]:
    """`all` or a comma-separated list of `STUDENTS` keys -> the keys, in table order."""
    names = list(STUDENTS) if text == "all" else [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in STUDENTS]
    if unknown or not names:
        raise ValueError(f"unknown students {unknown}; choose from {list(STUDENTS)} or 'all'")
    return [n for n in STUDENTS if n in names]


def result_path(run_dir: str, corpus: str, evaluation: Evaluation, split: str, step: int) -> str:
    """Where `evaluate` writes an evaluation's metrics for a run's step."""
    return os.path.join(run_dir, "eval", f"{corpus}{evaluation.suffix}-{split}-step{step}.json")


def read_numbers(
    student: Student, run_dir: str, corpus: str, split: str, step: int
) -> dict[str, Optional[float]]:
    """{accuracy, consistency, counterfactual_examples} of a run from `evaluate`'s files."""
    out: dict[str, Optional[float]] = {}
    for field, evaluation in ((ACCURACY, student.accuracy), (CONSISTENCY, student.consistency)):
        with open(result_path(run_dir, corpus, evaluation, split, step)) as f:
            scores = json.load(f)
        out[field] = scores.get(evaluation.key)
        if field == CONSISTENCY:
            out["counterfactual_examples"] = scores.get("counterfactual_examples")
            out["note"] = scores.get("faithfulness_note")
    return out


def summarise(runs: Sequence[dict]) -> list[dict]:
    """Per student (in order of first appearance): per-seed values, means and wall times.

    `runs` are records with `student`, `seed`, `accuracy`, `consistency` (None: n/a),
    `train_s` and `eval_s`.
    """
    rows: dict[str, dict] = {}
    for run in runs:
        row = rows.setdefault(run["student"], {"student": run["student"], "seeds": []})
        row["seeds"].append(run["seed"])
        for key in (ACCURACY, CONSISTENCY, "train_s", "eval_s"):
            row.setdefault(key, []).append(run[key])
        row["note"] = run.get("note")
    for row in rows.values():
        for key in (ACCURACY, CONSISTENCY, "train_s", "eval_s"):
            values = [v for v in row[key] if v is not None]
            row[f"{key}_mean"] = statistics.mean(values) if values else None
    return list(rows.values())


def _cell(values: Sequence[Optional[float]], mean: Optional[float]) -> str:
    if mean is None:
        return "n/a"
    return f"{mean:.1f} ({', '.join('n/a' if v is None else f'{v:.1f}' for v in values)})"


def markdown_table(summary: Sequence[dict], *, steps: int, batch: int, seeds: Sequence[int]) -> str:
    """The comparison as Markdown: accuracy, consistency and wall time per student."""
    lines = [
        f"| student | test accuracy %, mean (seeds {', '.join(map(str, seeds))}) "
        "| counterfactual consistency %, mean (per seed) | wall s per run: train + eval |",
        "| --- | --- | --- | --- |",
    ]
    for row in summary:
        wall = f"{row['train_s_mean']:.0f} + {row['eval_s_mean']:.0f}"
        accuracy = _cell(row[ACCURACY], row[f"{ACCURACY}_mean"])
        consistency = _cell(row[CONSISTENCY], row[f"{CONSISTENCY}_mean"])
        lines.append(f"| {row['student']} | {accuracy} | {consistency} | {wall} |")
    lines.append("")
    lines.append(
        f"Equal budget: {steps} optimizer steps of {batch} rows for every student, the same "
        "tiny T5 and optimizer; seed s sets train.seed and train.data_seed. A row is one packed "
        "sequence whose input holds about one question (72 tokens, questions up to 66): "
        "step-by-step's rows are label or rationale examples of the same questions; QCRD reads "
        f"{batch} label rows plus {batch} questions' candidate rationales per step (its own "
        "samples and a discriminator on top); PINTO's row is one question with its 4 choices."
    )
    return "\n".join(lines)
