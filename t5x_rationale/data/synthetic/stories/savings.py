"""Savings stories: weekly savings, gifts and purchases."""

from __future__ import annotations

from typing import Optional

from t5x_rationale.data.synthetic.problems import Builder, Problem, Step, step
from t5x_rationale.data.synthetic.sampling import Draw, large, medium, small
from t5x_rationale.data.synthetic.words import BIG_BUYS, GAMES, PEOPLE


def savings(draw: Draw, num_ops: int, mv: int) -> Optional[Problem]:
    """Weekly savings, gifts and purchases."""
    name, _, his = draw.choice(PEOPLE)
    b = Builder()
    s, w = b.given("s", large(draw, mv)), b.given("w", small(draw, mv) + 1)
    saved = step(
        "saved",
        s,
        "*",
        w,
        "the money saved",
        "dollars",
        f"{name} saves {{eq}} dollars",
        "The weekly savings add up to {eq} dollars",
    )
    stem = f"{name} saves {b.givens[s]} dollars every week for {b.givens[w]} weeks."
    if num_ops == 2:
        x = b.given("x", draw.int(1, b.givens[s] * b.givens[w]))
        question = (
            f"{stem} Then {name} spends {b.givens[x]} dollars on {draw.choice(BIG_BUYS)}. "
            f"How much money does {name} have left?"
        )
        return b.problem(question, [saved, _left("saved", x, name)])
    if num_ops == 3:
        return _with_money_before(draw, b, stem, (name, his), saved, mv)
    return _gift_and_games(draw, b, stem, (name, his), saved, mv)


def _with_money_before(
    draw: Draw, b: Builder, stem: str, person: tuple[str, str], saved: Step, mv: int
) -> Optional[Problem]:
    """The three-step story: money from before plus the savings, minus one purchase."""
    name, his = person
    h = b.given("h", large(draw, mv))
    x = b.given("x", draw.int(1, b.givens["s"] * b.givens["w"] + b.givens[h]))
    total = step(
        "total",
        h,
        "+",
        "saved",
        "the money before shopping",
        "dollars",
        f"With {his} savings, {name} has {{eq}} dollars",
        "In total there are {eq} dollars",
    )
    spent_from_savings = step(
        "rest",
        "saved",
        "-",
        x,
        "the part of the savings left after shopping",
        "dollars",
        f"After shopping, {name} has {{eq}} dollars of {his} savings left",
        "The savings minus the purchase is {eq} dollars",
    )
    left2 = step(
        "left",
        h,
        "+",
        "rest",
        "the money left",
        "dollars",
        f"Adding the money from before, {name} has {{eq}} dollars",
        "What remains is {eq} dollars",
    )
    question = (
        f"{name} already has {b.givens[h]} dollars. {stem} Then {name} spends {b.givens[x]} "
        f"dollars on {draw.choice(BIG_BUYS)}. How much money does {name} have now?"
    )
    return b.problem(
        question, [saved, total, _left("total", x, name)], [saved, spent_from_savings, left2]
    )


def _gift_and_games(
    draw: Draw, b: Builder, stem: str, person: tuple[str, str], saved: Step, mv: int
) -> Optional[Problem]:
    """The four-step story: the savings plus a gift, minus games bought at a unit price."""
    name, his = person
    g = b.given("g", large(draw, mv))
    _, many = draw.choice(GAMES)
    n, c = b.given("n", small(draw, mv)), b.given("c", medium(draw, mv))
    if b.givens[n] * b.givens[c] > b.givens["s"] * b.givens["w"] + b.givens[g]:
        return None
    total, cost, rest, left2 = _gift_steps(g, n, c, name, his, many)
    question = (
        f"{stem} {his.capitalize()} aunt gives {name} {b.givens[g]} dollars. {name} then buys "
        f"{b.givens[n]} {many} that cost {b.givens[c]} dollars each. "
        f"How much money does {name} have left?"
    )
    left = _left("total", "cost", name)
    return b.problem(question, [saved, total, cost, left], [saved, cost, rest, left2])


def _gift_steps(
    gift: str, count: str, price: str, name: str, his: str, many: str
) -> tuple[Step, Step, Step, Step]:
    """The steps of the gift story besides the savings and the money left: the money before
    shopping, the cost of the games, and the savings left after them plus the gift."""
    total = step(
        "total",
        "saved",
        "+",
        gift,
        "the money before shopping",
        "dollars",
        f"With the gift, {name} has {{eq}} dollars",
        "In total there are {eq} dollars",
    )
    cost = step(
        "cost",
        count,
        "*",
        price,
        f"the cost of the {many}",
        "dollars",
        f"The {many} cost {{eq}} dollars",
        f"{name} spends {{eq}} dollars on {many}",
    )
    rest = step(
        "rest",
        "saved",
        "-",
        "cost",
        "the part of the savings left after shopping",
        "dollars",
        f"After shopping, {name} has {{eq}} dollars of {his} savings",
        f"The savings minus the {many} is {{eq}} dollars",
    )
    left2 = step(
        "left",
        "rest",
        "+",
        gift,
        "the money left",
        "dollars",
        f"With the gift, {name} has {{eq}} dollars left",
        "What remains is {eq} dollars",
    )
    return total, cost, rest, left2


def _left(money: str, spent: str, name: str) -> Step:
    """The money left after spending."""
    return step(
        "left",
        money,
        "-",
        spent,
        "the money left",
        "dollars",
        f"{name} has {{eq}} dollars left",
        "What remains is {eq} dollars",
    )
