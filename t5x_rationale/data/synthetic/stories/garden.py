"""Garden stories: rows of plants, their harvest, and baskets for selling it."""

from __future__ import annotations

from typing import Optional

from t5x_rationale.data.synthetic.problems import Builder, Problem, Step, step
from t5x_rationale.data.synthetic.sampling import Draw, divisors, small
from t5x_rationale.data.synthetic.words import CROPS, PEOPLE


def garden(draw: Draw, num_ops: int, mv: int) -> Optional[Problem]:
    """Rows of plants, their harvest, and baskets for selling it."""
    name, _, his = draw.choice(PEOPLE)
    one, many = draw.choice(CROPS)
    b = Builder()
    r, p = b.given("r", small(draw, mv)), b.given("p", small(draw, mv) + 1)
    t = b.given("t", draw.int(2, max(3, mv // 3)))
    by_plant, by_row = _harvest_plans(name, one, many)
    stem = (
        f"{name} plants {b.givens[r]} rows of {one} plants with {b.givens[p]} plants in each row. "
        f"Each plant gives {b.givens[t]} {many}."
    )
    if num_ops == 2:
        return b.problem(f"{stem} How many {many} does {name} pick?", by_plant, by_row)
    harvest_value = b.givens[r] * b.givens[p] * b.givens[t]
    if num_ops == 3:
        baskets = divisors(harvest_value, 3, 15)
        if not baskets:
            return None
        k = b.given("k", draw.choice(baskets))
        count = _baskets("harvest", k, name)
        question = (
            f"{stem} {name} packs them in baskets of {b.givens[k]}. "
            f"How many baskets does {name} fill?"
        )
        return b.problem(question, [*by_plant, count], [*by_row, count])
    k = b.given("k", draw.int(3, 12))
    keep = b.given("keep", draw.int(0, 2) * b.givens[k] + harvest_value % b.givens[k])
    if b.givens[keep] == 0 or b.givens[keep] >= harvest_value:
        return None
    rest = step(
        "rest",
        "harvest",
        "-",
        keep,
        f"the number of {many} to sell",
        many,
        f"{name} has {{eq}} {many} to sell",
        f"That leaves {{eq}} {many}",
    )
    count = _baskets("rest", k, name)
    question = (
        f"{stem} {name} keeps {b.givens[keep]} {many} for {his} family and sells the rest in "
        f"baskets of {b.givens[k]}. How many baskets does {name} sell?"
    )
    return b.problem(question, [*by_plant, rest, count], [*by_row, rest, count])


def _harvest_plans(name: str, one: str, many: str) -> tuple[list[Step], list[Step]]:
    """The harvest counted plant by plant, or row by row."""
    plants = step(
        "plants",
        "r",
        "*",
        "p",
        f"the number of {one} plants",
        "plants",
        f"{name} has {{eq}} plants",
        f"The garden holds {{eq}} {one} plants",
    )
    harvest = step(
        "harvest",
        "plants",
        "*",
        "t",
        f"the number of {many} picked",
        many,
        f"{name} picks {{eq}} {many}",
        f"The plants give {{eq}} {many}",
    )
    per_row = step(
        "per_row",
        "p",
        "*",
        "t",
        f"the number of {many} from one row",
        many,
        f"One row gives {{eq}} {many}",
        f"Each row yields {{eq}} {many}",
    )
    harvest2 = step(
        "harvest",
        "per_row",
        "*",
        "r",
        f"the number of {many} picked",
        many,
        f"All rows give {{eq}} {many}",
        f"{name} picks {{eq}} {many}",
    )
    return [plants, harvest], [per_row, harvest2]


def _baskets(harvest: str, size: str, name: str) -> Step:
    """The baskets the harvest fills."""
    return step(
        "baskets",
        harvest,
        "/",
        size,
        "the number of baskets",
        "baskets",
        f"{name} fills {{eq}} baskets",
        "That makes {eq} baskets",
    )
