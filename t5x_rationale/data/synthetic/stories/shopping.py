"""Shopping stories: goods bought at a unit price, one or two kinds, maybe paid with a banknote."""

from __future__ import annotations

from typing import Optional

from t5x_rationale.data.synthetic.problems import Builder, Problem, Step, step
from t5x_rationale.data.synthetic.sampling import Draw, banknote, medium, small
from t5x_rationale.data.synthetic.words import GOODS, PEOPLE, SHOPS


def shopping(draw: Draw, num_ops: int, mv: int) -> Optional[Problem]:
    """Buying goods at a unit price, possibly two kinds, possibly paying with a banknote."""
    name, _, _ = draw.choice(PEOPLE)
    (_, many1), (_, many2) = draw.shuffled(GOODS)[:2]
    shop = draw.choice(SHOPS)
    b = Builder()
    n1, p1 = b.given("n1", small(draw, mv) + 1), b.given("p1", medium(draw, mv))
    cost1 = _cost("cost1", n1, p1, name, many1)
    if num_ops == 2:
        note = b.given("note", banknote(draw, b.givens[n1] * b.givens[p1]))
        question = (
            f"{name} buys {b.givens[n1]} {many1} at {shop} for {b.givens[p1]} dollars each "
            f"and pays with a {b.givens[note]}-dollar bill. How much change does {name} get?"
        )
        return b.problem(question, [cost1, _change(note, "cost1", name)])
    n2, p2 = b.given("n2", small(draw, mv) + 1), b.given("p2", medium(draw, mv))
    cost2 = _cost("cost2", n2, p2, name, many2)
    total = step(
        "total",
        "cost1",
        "+",
        "cost2",
        "the total cost",
        "dollars",
        f"Altogether {name} spends {{eq}} dollars",
        "The total comes to {eq} dollars",
    )
    stem = (
        f"At {shop}, {name} buys {b.givens[n1]} {many1} for {b.givens[p1]} dollars each and "
        f"{b.givens[n2]} {many2} for {b.givens[p2]} dollars each."
    )
    if num_ops == 3:
        return b.problem(f"{stem} How much does {name} spend in total?", [cost1, cost2, total])
    return _pay_for_both(draw, b, stem, name, (many1, many2), (cost1, cost2, total))


def _pay_for_both(
    draw: Draw,
    b: Builder,
    stem: str,
    name: str,
    goods: tuple[str, str],
    costs: tuple[Step, Step, Step],
) -> Optional[Problem]:
    """The four-step story: both kinds paid with one banknote; change from the total, or
    from what is left of the bill after each kind."""
    many1, many2 = goods
    cost1, cost2, total = costs
    spent = b.givens["n1"] * b.givens["p1"] + b.givens["n2"] * b.givens["p2"]
    note = b.given("note", banknote(draw, spent))
    question = (
        f"{stem} {name} pays with a {b.givens[note]}-dollar bill. How much change does {name} get?"
    )
    after1 = step(
        "after1",
        note,
        "-",
        "cost1",
        f"the money left after paying for the {many1}",
        "dollars",
        f"After the {many1}, {name} has {{eq}} dollars of the bill left",
        f"Paying for the {many1} leaves {{eq}} dollars",
    )
    change2 = _change(
        "after1", "cost2", name, f"After the {many2}, {name} gets {{eq}} dollars back"
    )
    return b.problem(
        question,
        [cost1, cost2, total, _change(note, "total", name)],
        [cost1, cost2, after1, change2],
    )


def _cost(result: str, count: str, price: str, name: str, many: str) -> Step:
    """What the goods of one kind cost."""
    return step(
        result,
        count,
        "*",
        price,
        f"the cost of the {many}",
        "dollars",
        f"{name} spends {{eq}} dollars on {many}",
        f"The {many} cost {{eq}} dollars",
    )


def _change(paid: str, cost: str, name: str, gets: Optional[str] = None) -> Step:
    """The change: what was paid minus a cost (`gets` words the narrative sentence)."""
    return step(
        "change",
        paid,
        "-",
        cost,
        f"{name}'s change",
        "dollars",
        gets or f"{name} gets {{eq}} dollars back",
        "The change is {eq} dollars",
    )
