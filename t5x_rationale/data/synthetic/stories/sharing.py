"""Sharing stories: snacks shared equally among friends, some eaten or added first."""

from __future__ import annotations

from typing import Optional

from t5x_rationale.data.synthetic.problems import Builder, Problem, Step, step
from t5x_rationale.data.synthetic.sampling import Draw, divisors, large, medium, small
from t5x_rationale.data.synthetic.words import CONTAINERS, PEOPLE, SNACKS


def sharing(draw: Draw, num_ops: int, mv: int) -> Optional[Problem]:
    """Containers of snacks shared equally among friends, some eaten or added first."""
    name, _, his = draw.choice(PEOPLE)
    snack = draw.choice(SNACKS)
    one, many = draw.choice(CONTAINERS)
    b = Builder()
    k, m = b.given("k", small(draw, mv)), b.given("m", large(draw, mv))
    made = b.givens[k] * b.givens[m]
    total = step(
        "total",
        k,
        "*",
        m,
        f"the number of {snack}",
        snack,
        f"{name} has {{eq}} {snack}",
        f"There are {{eq}} {snack} in the {many}",
    )
    stem = f"{name} has {b.givens[k]} {many} of {snack} with {b.givens[m]} {snack} in each {one}."
    if num_ops == 2:
        friends = divisors(made, 2, 12)
        if not friends:
            return None
        f = b.given("f", draw.choice(friends))
        question = (
            f"{stem} {name} shares them equally among {b.givens[f]} friends. "
            f"How many {snack} does each friend get?"
        )
        return b.problem(question, [total, _each("total", f, snack)])
    f = b.given("f", draw.int(2, 9))
    if num_ops == 3:
        e = b.given("e", draw.int(1, 3) * b.givens[f] + made % b.givens[f])
        question = (
            f"{stem} {name} eats {b.givens[e]} of them and shares the rest equally among "
            f"{b.givens[f]} friends. How many {snack} does each friend get?"
        )
        rest = _rest("total", e, name, snack)
        return b.problem(question, [total, rest, _each("rest", f, snack)])
    return _loose_ones_too(draw, b, stem, (name, his, snack, many), total, mv)


def _loose_ones_too(
    draw: Draw, b: Builder, stem: str, words: tuple[str, str, str, str], total: Step, mv: int
) -> Optional[Problem]:
    """The four-step story: a friend adds loose snacks before some are eaten and the rest
    shared; the loose ones can be counted before or after the eating."""
    name, his, snack, many = words
    made = b.givens["k"] * b.givens["m"]
    extra = b.given("extra", medium(draw, mv))
    e = b.given("e", draw.int(1, 3) * b.givens["f"] + (made + b.givens[extra]) % b.givens["f"])
    everything = step(
        "all",
        "total",
        "+",
        extra,
        f"all of {name}'s {snack}",
        snack,
        f"With the loose ones, {name} has {{eq}} {snack}",
        f"Together that is {{eq}} {snack}",
    )
    eaten_first = step(
        "after_eating",
        "total",
        "-",
        e,
        f"the number of {snack} left after eating",
        snack,
        f"After eating some, {name} has {{eq}} {snack} from the {many}",
        f"Eating some leaves {{eq}} {snack} from the {many}",
    )
    rest2 = step(
        "rest",
        "after_eating",
        "+",
        extra,
        f"the number of {snack} left to share",
        snack,
        f"Adding the loose ones, {name} has {{eq}} {snack} to share",
        f"With the loose ones there are {{eq}} {snack} to share",
    )
    question = (
        f"{stem} {his.capitalize()} friend gives {name} {b.givens[extra]} more {snack}. "
        f"{name} eats {b.givens[e]} of them and shares the rest equally among "
        f"{b.givens['f']} friends. How many {snack} does each friend get?"
    )
    each = _each("rest", "f", snack)
    rest = _rest("all", e, name, snack)
    return b.problem(question, [total, everything, rest, each], [total, eaten_first, rest2, each])


def _rest(left: str, eaten: str, name: str, snack: str) -> Step:
    """The snacks left to share once some are eaten."""
    return step(
        "rest",
        left,
        "-",
        eaten,
        f"the number of {snack} left to share",
        snack,
        f"{name} has {{eq}} {snack} left to share",
        f"That leaves {{eq}} {snack}",
    )


def _each(shared: str, friends: str, snack: str) -> Step:
    """Each friend's share."""
    return step(
        "each",
        shared,
        "/",
        friends,
        "the number each friend gets",
        snack,
        f"Each friend gets {{eq}} {snack}",
        f"Sharing them out gives {{eq}} {snack} per friend",
    )
