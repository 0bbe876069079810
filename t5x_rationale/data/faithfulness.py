"""Counterfactual consistency: does a student's answer follow its rationale?

For an evaluated example whose teacher row has a negative rationale r' (the first one) and its
wrong answer a' (`negative_labels[0]`), the student's own output is written up to its answer
with r' in place of its rationale, that prefix is forced as the start of the decoded output,
and the rest is decoded. The example is consistent when the answer parsed from the whole
output (`metrics.extract_answer`) equals a' parsed the same way. `counterfactual_consistency`
is the percentage of consistent examples among those measured.

| kind        | tasks (`tasks.py` names)             | forced prefix                             |
|-------------|--------------------------------------|-------------------------------------------|
| `cot`       | `_cot`, `_cot_decoder`               | `r' + " -->"`                             |
| `factual`   | `_factual`, `_factual_decoder`       | `"[factual] " + r' + " So the answer is"` |
| `rationale` | `_rationale` (step-by-step's head)   | r' up to its last "answer is"             |
| `label`     | `_label`                             | none: not applicable (no rationale)       |

A task's kind comes from `register_task_format`, else from its name's suffix as
`register_rationale_tasks` names it, else it is unknown.

A prefix stops before the space that precedes the answer, so the answer's first token is the
model's own (one "▁7" piece, as in training). Examples whose teacher row has no negative with a
label are counted (`examples_without_negative`), as are, for `rationale`, negatives without an
"answer is" marker (`examples_without_answer_marker`).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Optional, Sequence

import seqio

from t5x_rationale.data.counterfactual import ANSWER_BRIDGE, FACTUAL_MARKER
from t5x_rationale.data.examples import text_of
from t5x_rationale.data.metrics import extract_answer

KINDS = ("cot", "factual", "rationale", "label")
NOT_CONDITIONED = "not applicable: the answer is not conditioned on a rationale"
NO_NEGATIVES = "not applicable: no evaluated example has a negative rationale with its answer"
_ANSWER_MARKER = re.compile(r"answer is", re.IGNORECASE)
_TASK_FORMATS: dict[str, "PrefixFormat"] = {}
_SUFFIX_KINDS = (
    ("_cot", "cot"),
    ("_cot_decoder", "cot"),
    ("_factual", "factual"),
    ("_factual_decoder", "factual"),
    ("_rationale", "rationale"),
    ("_label", "label"),
)


@dataclasses.dataclass(frozen=True)
class PrefixFormat:
    """How a task's output reaches its answer (`kind` in `KINDS`)."""

    kind: str
    cot_separator: str = " --> "

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"faithfulness format {self.kind!r} not in {KINDS}")

    @property
    def applicable(self) -> bool:
        return self.kind != "label"

    def prefix(self, negative: str) -> Optional[str]:
        """The forced output prefix for negative rationale `negative` (None: no marker)."""
        if self.kind == "cot":
            return negative + self.cot_separator.rstrip()
        if self.kind == "factual":
            return FACTUAL_MARKER + negative + ANSWER_BRIDGE
        if self.kind == "rationale":
            markers = list(_ANSWER_MARKER.finditer(negative))
            return negative[: markers[-1].end()] if markers else None
        raise ValueError("a label-only task has no rationale to replace")


def register_task_format(task_name: str, fmt: PrefixFormat) -> None:
    """Records how `task_name`'s outputs reach their answer (overrides its name's suffix)."""
    _TASK_FORMATS[task_name] = fmt


def task_format(task_name: str, kind: Optional[str] = None) -> Optional[PrefixFormat]:
    """`kind` when given, else the task's registered format, else its name's (None: unknown)."""
    if kind is not None:
        return PrefixFormat(kind)
    if task_name in _TASK_FORMATS:
        return _TASK_FORMATS[task_name]
    kinds = [k for suffix, k in _SUFFIX_KINDS if task_name.endswith(suffix)]
    return PrefixFormat(kinds[0]) if kinds else None


@dataclasses.dataclass(frozen=True)
class Case:
    """One measured example: its position among the evaluated ones, prefix and a'."""

    index: int
    prefix: str
    negative_label: str


@dataclasses.dataclass
class Plan:
    """The measured cases of one evaluated task split, and the ids left out (by reason)."""

    cases: list[Case]
    without_negative: list[str]
    without_marker: list[str]
    kind: str


def first_negatives(task: seqio.Task, split: str) -> dict[str, Optional[tuple[str, str]]]:
    """id -> (first negative, its label) of the task's source rows (None: no usable negative)."""
    out: dict[str, Optional[tuple[str, str]]] = {}
    for row in task.source.get_dataset(split=split, shuffle=False).as_numpy_iterator():
        negatives, labels = row.get("negatives", ()), row.get("negative_labels", ())
        usable = len(negatives) > 0 and len(labels) > 0
        out[text_of(row["id"])] = (text_of(negatives[0]), text_of(labels[0])) if usable else None
    return out


def plan(
    fmt: PrefixFormat, examples: Sequence[dict], negatives: dict[str, Optional[tuple[str, str]]]
) -> Plan:
    """The forced prefix and a' of every evaluated example that has a negative."""
    result = Plan([], [], [], fmt.kind)
    for i, ex in enumerate(examples):
        if "id" not in ex:
            raise ValueError("counterfactual consistency needs an `id` on every example")
        key = text_of(ex["id"])
        if key not in negatives:
            raise ValueError(f"example id {key!r} is not in the task's source rows")
        if negatives[key] is None:
            result.without_negative.append(key)
            continue
        negative, label = negatives[key]
        prefix = fmt.prefix(negative)
        if prefix is None:
            result.without_marker.append(key)
            continue
        result.cases.append(Case(i, prefix, label))
    return result


def score(measured: Plan, texts: Sequence[str]) -> tuple[dict, list[Optional[str]]]:
    """Consistency (percent; None when nothing was measured) and counts, and each case's
    parsed answer, from the decoded texts (forced prefix included) of the plan's cases."""
    if len(texts) != len(measured.cases):
        raise ValueError(f"{len(texts)} outputs for {len(measured.cases)} counterfactual cases")
    answers = [extract_answer(text) for text in texts]
    hits = sum(
        a is not None and a == extract_answer(c.negative_label)
        for a, c in zip(answers, measured.cases)
    )
    n = len(measured.cases)
    scores = {
        "counterfactual_consistency": 100.0 * hits / n if n else None,
        "counterfactual_examples": float(n),
        "examples_without_negative": float(len(measured.without_negative)),
    }
    if measured.kind == "rationale":
        scores["examples_without_answer_marker"] = float(len(measured.without_marker))
    return scores, answers


def prediction_rows(
    measured: Plan, examples: Sequence[dict], texts: Sequence[str], answers: Sequence
) -> list[dict]:
    """One JSON-ready row per evaluated example: forced prefix, output, parsed answer and a'
    (or why the example was not measured)."""
    rows = [{"id": text_of(ex.get("id", i)), "prefix": None} for i, ex in enumerate(examples)]
    skipped = {k: "no negative" for k in measured.without_negative}
    skipped.update({k: "negative has no answer marker" for k in measured.without_marker})
    for row in rows:
        if row["id"] in skipped:
            row["skipped"] = skipped[row["id"]]
    for case, text, answer in zip(measured.cases, texts, answers):
        target = extract_answer(case.negative_label)
        rows[case.index].update(
            prefix=case.prefix,
            prediction=text,
            answer=answer,
            counterfactual_answer=target,
            consistent=answer is not None and answer == target,
        )
    return rows
