"""Incorrect rationales (negatives) with exactly one realistic mistake each.

A mistake is an arithmetic slip in one step (off by one, off by ten, a dropped carry or
borrow, one times-table row off), the wrong operation in one step, or a wrong number copied
from the question. Later steps compute correctly from the wrong value, so the mistake
carries through to a wrong final answer.
"""

from __future__ import annotations

from typing import Optional, Sequence

from t5x_rationale.data.synthetic.problems import Line, Mistake, Plan, run_plan
from t5x_rationale.data.synthetic.rationales import Solution
from t5x_rationale.data.synthetic.sampling import Draw
from t5x_rationale.data.synthetic.wording import STYLES, render

_WRONG_OPS = {"+": ("-", "*"), "-": ("+",), "*": ("+",), "/": ("*",)}


def _slip_values(line: Line) -> list[int]:
    """Wrong results a person might write for this step."""
    a, b, c = line.a, line.b, line.c
    values = [c + 1, c - 1, c + 10, c - 10]
    if line.op == "+" and a % 10 + b % 10 >= 10:
        values.append(c - 10)  # dropped the carry
    if line.op == "-" and a % 10 < b % 10:
        values.append(c + 10)  # forgot to borrow
    if line.op == "*":
        values += [c + a, c - a, c + b, c - b]  # one times-table row off
    return [v for v in values if v >= 0 and v != c]


def _miscopied_values(value: int, givens: dict[str, int]) -> list[int]:
    """Numbers a person might copy instead of `value`: a near miss, swapped digits, or another
    stated number."""
    values = [value + 1, value - 1, value + 10, value - 10]
    digits = str(value)
    if len(digits) == 2 and digits[1] != "0" and digits[0] != digits[1]:
        values.append(int(digits[::-1]))
    values += list(givens.values())
    return [v for v in values if v > 0 and v != value]


def _random_mistake(
    kind: str, plan: Plan, lines: Sequence[Line], givens: dict[str, int], draw: Draw
) -> Optional[Mistake]:
    """One mistake of the given kind at a random step, or None if that step allows none."""
    if kind == "operand":
        steps = [i for i, s in enumerate(plan) if s.left in givens or s.right in givens]
        index = draw.choice(steps) if steps else 0
    else:
        index = draw.int(0, len(plan) - 1)
    line = lines[index]
    if kind == "slip":
        values = _slip_values(line)
        return Mistake("slip", index, value=draw.choice(values)) if values else None
    if kind == "operation":
        return Mistake("operation", index, op=draw.choice(_WRONG_OPS[line.op]))
    sides = [
        side
        for side, name in (("left", plan[index].left), ("right", plan[index].right))
        if name in givens
    ]
    if not sides:
        return None
    side = draw.choice(sides)
    values = _miscopied_values(givens[getattr(plan[index], side)], givens)
    return Mistake("operand", index, value=draw.choice(values), side=side) if values else None


def negative_rationales(
    solutions: Sequence[Solution], givens: dict[str, int], draw: Draw, count: int
) -> tuple[list[str], list[str]]:
    """`count` incorrect rationales with one mistake each, and the wrong answer each reaches.

    Each negative prefers a mistake kind and a wrong answer not used by the ones before it.
    """
    answer = solutions[0].lines[-1].c
    kinds = draw.shuffled(("slip", "operation", "operand"))
    texts: list[str] = []
    labels: list[str] = []
    for attempt in range(40 * count):
        if len(texts) == count:
            break
        solution = draw.choice(solutions)
        kind = kinds[len(texts) % len(kinds)] if attempt < 20 * count else "slip"
        mistake = _random_mistake(kind, solution.plan, solution.lines, givens, draw)
        wrong = run_plan(solution.plan, givens, mistake) if mistake else None
        if wrong is None or wrong[-1].c == answer:
            continue
        label = str(wrong[-1].c)
        if label in labels and attempt < 30 * count:
            continue
        text = render(wrong, draw.choice(solution.orders), draw.choice(STYLES), draw)
        if text not in texts:
            texts.append(text)
            labels.append(label)
    return texts, labels
