"""Correct rationales: several distinct ones per question (diverse reasoning).

The rationales of one question differ in wording style and, where the problem allows it,
in step order or plan (decomposition).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

from t5x_rationale.data.synthetic.problems import Line, Plan, Problem, run_plan
from t5x_rationale.data.synthetic.sampling import Draw
from t5x_rationale.data.synthetic.wording import STYLES, render, valid_orders


@dataclasses.dataclass(frozen=True)
class Solution:
    """A plan with its computed lines and the step orders a rationale may follow."""

    plan: Plan
    lines: list[Line]
    orders: tuple[tuple[int, ...], ...]


def solve(problem: Problem) -> list[Solution]:
    """Every plan of the problem, solved."""
    return [
        Solution(plan, run_plan(plan, problem.givens), valid_orders(plan)) for plan in problem.plans
    ]


def correct_rationales(solutions: Sequence[Solution], draw: Draw, count: int) -> list[str]:
    """`count` distinct correct rationales, spreading styles, plans and step orders across them."""
    styles = draw.shuffled(range(len(STYLES)))
    used_orders: set[tuple[int, tuple[int, ...]]] = set()
    texts: list[str] = []
    for attempt in range(20 * count):
        if len(texts) == count:
            break
        plan_index = attempt % len(solutions)
        solution = solutions[plan_index]
        orders = [
            o for o in solution.orders if (plan_index, o) not in used_orders
        ] or solution.orders
        order = draw.choice(orders)
        text = render(solution.lines, order, STYLES[styles[attempt % len(styles)]], draw)
        if text not in texts:
            texts.append(text)
            used_orders.add((plan_index, order))
    return texts
