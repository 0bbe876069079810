"""The problem model: difficulty, plan steps, problems and how a plan is computed.

A story writes a `Problem`: its question, the numbers it states (`givens`) and one or more
plans (`Step` sequences) that reach the answer. `run_plan` computes a plan, optionally with
one `Mistake`, which is how both the correct and the incorrect rationales get their numbers.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence, Union


@dataclasses.dataclass(frozen=True)
class Difficulty:
    """How hard the questions are.

    Attributes:
      min_ops, max_ops: the number of arithmetic operations per question (2 to 4).
      max_value: the largest count, price or rate sampled for a question. Quantities that a
        story derives to keep the arithmetic whole (a banknote that covers a bill, a bag
        of flour big enough for the batches) can be larger.
    """

    min_ops: int = 2
    max_ops: int = 4
    max_value: int = 40

    def __post_init__(self):
        if not 2 <= self.min_ops <= self.max_ops <= 4:
            raise ValueError(
                f"need 2 <= min_ops <= max_ops <= 4, got {self.min_ops}, {self.max_ops}"
            )
        if self.max_value < 10:
            raise ValueError(f"max_value must be at least 10, got {self.max_value}")


DIFFICULTY_LEVELS = {
    1: Difficulty(min_ops=2, max_ops=2, max_value=12),
    2: Difficulty(min_ops=2, max_ops=3, max_value=30),
    3: Difficulty(min_ops=3, max_ops=4, max_value=60),
}
DEFAULT_DIFFICULTY = Difficulty()
DifficultyLike = Union[int, Difficulty]


def as_difficulty(difficulty: DifficultyLike) -> Difficulty:
    """A `Difficulty` from a preset level (1, 2, 3) or a `Difficulty` itself."""
    if isinstance(difficulty, Difficulty):
        return difficulty
    if difficulty in DIFFICULTY_LEVELS:
        return DIFFICULTY_LEVELS[difficulty]
    raise ValueError(
        f"difficulty must be a Difficulty or one of {sorted(DIFFICULTY_LEVELS)}, got {difficulty!r}"
    )


@dataclasses.dataclass(frozen=True)
class Step:
    """One computation of a solution plan: `result = left op right`, with its wordings.

    `left` and `right` name stated numbers or earlier results; `desc` is a noun phrase for
    the result ("the cost of the pens"), `unit` its unit ("dollars", may be ""), and `says`
    narrative sentences with an `{eq}` slot ("Maria spends {eq} dollars on pens").
    """

    result: str
    left: str
    op: str
    right: str
    desc: str
    unit: str
    says: tuple[str, ...]


Plan = tuple[Step, ...]


@dataclasses.dataclass(frozen=True)
class Problem:
    """A question, the numbers it states, and one or more plans that all reach its answer."""

    question: str
    givens: dict[str, int]
    plans: tuple[Plan, ...]


def apply_op(op: str, a: int, b: int) -> Optional[int]:
    """`a op b`, or None when the result is negative or the division is not exact."""
    if op == "+":
        return a + b
    if op == "-":
        return a - b if a >= b else None
    if op == "*":
        return a * b
    return a // b if b > 0 and a % b == 0 else None


@dataclasses.dataclass(frozen=True)
class Mistake:
    """The one error of a negative rationale, made at plan step `step`.

    kind "slip": the step writes `value` as its result; "operation": it uses `op`;
    "operand": its operand on `side` ("left" or "right") is `value` instead of the stated number.
    """

    kind: str
    step: int
    value: int = 0
    op: str = ""
    side: str = ""


@dataclasses.dataclass(frozen=True)
class Line:
    """One computed step as written: `a op b = c`."""

    step: Step
    a: int
    op: str
    b: int
    c: int

    @property
    def equation(self) -> str:
        """The computation as a rationale shows it."""
        return f"{self.a} {self.op} {self.b} = {self.c}"


def run_plan(
    plan: Plan, givens: dict[str, int], mistake: Optional[Mistake] = None
) -> Optional[list[Line]]:
    """The lines of a plan (with an optional mistake); None if a step is not a whole number >= 0."""
    values = dict(givens)
    lines = []
    for index, step in enumerate(plan):
        a, op, b = values[step.left], step.op, values[step.right]
        here = mistake if mistake is not None and mistake.step == index else None
        if here is not None and here.kind == "operand":
            a, b = (here.value, b) if here.side == "left" else (a, here.value)
        if here is not None and here.kind == "operation":
            op = here.op
        c = apply_op(op, a, b)
        if c is None:
            return None
        if here is not None and here.kind == "slip":
            c = here.value
        values[step.result] = c
        lines.append(Line(step, a, op, b, c))
    return lines


class Builder:
    """Collects the stated numbers and the steps of a problem while a story writes it."""

    def __init__(self):
        self.givens: dict[str, int] = {}

    def given(self, name: str, value: int) -> str:
        """Records a number stated in the question."""
        self.givens[name] = int(value)
        return name

    def problem(
        self, question: str, primary: Sequence[Step], *alternatives: Sequence[Step]
    ) -> Optional[Problem]:
        """The problem, or None if the primary plan has a step that is not a whole number >= 0.

        Alternative plans are kept only if they are whole too, take as many steps and reach the
        same answer.
        """
        lines = run_plan(tuple(primary), self.givens)
        if lines is None:
            return None
        plans = [tuple(primary)]
        for plan in alternatives:
            other = run_plan(tuple(plan), self.givens)
            if other is not None and other[-1].c == lines[-1].c and len(plan) == len(primary):
                plans.append(tuple(plan))
        return Problem(question, dict(self.givens), tuple(plans))


def step(result: str, left: str, op: str, right: str, desc: str, unit: str, *says: str) -> Step:
    """Shorthand for a `Step`."""
    return Step(result, left, op, right, desc, unit, tuple(says))
