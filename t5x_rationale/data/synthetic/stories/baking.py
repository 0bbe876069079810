"""Baking stories: flour used by batches, baked goods packed in boxes, eggs left over."""

from __future__ import annotations

from typing import Optional

from t5x_rationale.data.synthetic.problems import Builder, Problem, Step, step
from t5x_rationale.data.synthetic.sampling import Draw, medium, small
from t5x_rationale.data.synthetic.words import BAKES, OTHER_BAKES, PEOPLE


def baking(draw: Draw, num_ops: int, mv: int) -> Optional[Problem]:
    """Batches of baked goods: flour used, boxes filled, eggs left."""
    name, _, _ = draw.choice(PEOPLE)
    bake = draw.choice(BAKES)
    story = {2: _flour_left, 3: _boxes_filled}.get(num_ops, _eggs_left)
    return story(draw, Builder(), name, bake, mv)


def _flour_left(draw: Draw, b: Builder, name: str, bake: str, mv: int) -> Optional[Problem]:
    """Two steps: the flour the batches use, taken from a bag."""
    g, n = b.given("g", 10 * medium(draw, mv)), b.given("n", small(draw, mv))
    needed = b.givens[g] * b.givens[n]
    bag = b.given("bag", 1000 * (needed // 1000 + draw.int(1, 2)))
    used = step(
        "used",
        g,
        "*",
        n,
        "the flour used",
        "grams",
        f"{name} uses {{eq}} grams of flour",
        "The batches need {eq} grams of flour",
    )
    left = step(
        "left",
        bag,
        "-",
        "used",
        "the flour left",
        "grams",
        "{eq} grams of flour are left",
        "The bag still holds {eq} grams of flour",
    )
    question = (
        f"One batch of {bake} needs {b.givens[g]} grams of flour. {name} bakes {b.givens[n]} "
        f"batches from a {b.givens[bag]} gram bag of flour. How many grams of flour are left?"
    )
    return b.problem(question, [used, left])


def _boxes_filled(draw: Draw, b: Builder, name: str, bake: str, mv: int) -> Optional[Problem]:
    """Three steps: the batches baked, some sold, the rest packed in full boxes."""
    m, n = b.given("m", medium(draw, mv) + 2), b.given("n", small(draw, mv))
    made = b.givens[m] * b.givens[n]
    box = b.given("box", draw.int(2, 8))
    sold = b.given("sold", draw.int(0, 2) * b.givens[box] + made % b.givens[box])
    if b.givens[sold] == 0 or b.givens[sold] >= made:
        return None
    baked = step(
        "baked",
        m,
        "*",
        n,
        f"the number of {bake} baked",
        bake,
        f"{name} bakes {{eq}} {bake}",
        f"The batches make {{eq}} {bake}",
    )
    rest = step(
        "rest",
        "baked",
        "-",
        sold,
        f"the number of {bake} left to pack",
        bake,
        f"{{eq}} {bake} are left to pack",
        f"{name} has {{eq}} {bake} left",
    )
    boxes = step(
        "boxes",
        "rest",
        "/",
        box,
        "the number of boxes",
        "boxes",
        f"{name} fills {{eq}} boxes",
        "That makes {eq} full boxes",
    )
    question = (
        f"Each batch makes {b.givens[m]} {bake}. {name} bakes {b.givens[n]} batches, sells "
        f"{b.givens[sold]} {bake}, and packs the rest in boxes of {b.givens[box]}. "
        f"How many boxes does {name} fill?"
    )
    return b.problem(question, [baked, rest, boxes])


def _eggs_left(draw: Draw, b: Builder, name: str, bake: str, mv: int) -> Optional[Problem]:
    """Four steps: eggs for two kinds of batches, taken from the eggs at hand."""
    other = draw.choice(OTHER_BAKES)
    n1, e1 = b.given("n1", small(draw, mv)), b.given("e1", draw.int(2, 6))
    n2, e2 = b.given("n2", small(draw, mv)), b.given("e2", draw.int(2, 6))
    needed = b.givens[n1] * b.givens[e1] + b.givens[n2] * b.givens[e2]
    eggs = b.given("eggs", 12 * (needed // 12 + draw.int(1, 3)))
    question = (
        f"{name} has {b.givens[eggs]} eggs. {name} bakes {b.givens[n1]} batches of {bake} that "
        f"need {b.givens[e1]} eggs each and {b.givens[n2]} batches of {other} that need "
        f"{b.givens[e2]} eggs each. How many eggs are left?"
    )
    return b.problem(question, *_egg_plans(name, bake, other))


def _egg_plans(name: str, bake: str, other: str) -> tuple[list[Step], list[Step]]:
    """Eggs left after both kinds at once, or after one kind and then the other."""
    u1 = _eggs_for("u1", "n1", "e1", name, bake)
    u2 = _eggs_for("u2", "n2", "e2", name, other)
    used = step(
        "used",
        "u1",
        "+",
        "u2",
        "the number of eggs used",
        "eggs",
        f"Altogether {name} uses {{eq}} eggs",
        "The baking needs {eq} eggs in total",
    )
    after1 = step(
        "after1",
        "eggs",
        "-",
        "u1",
        f"the number of eggs left after the {bake}",
        "eggs",
        f"After the {bake}, {name} has {{eq}} eggs",
        f"The {bake} leave {{eq}} eggs",
    )
    left = _eggs_left_after("eggs", "used", f"{name} has {{eq}} eggs left")
    left2 = _eggs_left_after("after1", "u2", f"After the {other}, {name} has {{eq}} eggs left")
    return [u1, u2, used, left], [u1, u2, after1, left2]


def _eggs_for(result: str, batches: str, per_batch: str, name: str, what: str) -> Step:
    """The eggs that the batches of one kind take."""
    return step(
        result,
        batches,
        "*",
        per_batch,
        f"the number of eggs for the {what}",
        "eggs",
        f"The {what} take {{eq}} eggs",
        f"{name} uses {{eq}} eggs for the {what}",
    )


def _eggs_left_after(eggs: str, used: str, says: str) -> Step:
    """The eggs left once some are used (`says` words the narrative sentence)."""
    return step(
        "left",
        eggs,
        "-",
        used,
        "the number of eggs left",
        "eggs",
        says,
        "That leaves {eq} eggs",
    )
