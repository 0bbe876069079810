"""Travel stories: distance = speed * time, over one or two legs of a trip."""

from __future__ import annotations

from typing import Optional

from t5x_rationale.data.synthetic.problems import Builder, Problem, Step, step
from t5x_rationale.data.synthetic.sampling import Draw, small
from t5x_rationale.data.synthetic.words import PEOPLE, VEHICLES


def travel(draw: Draw, num_ops: int, mv: int) -> Optional[Problem]:
    """Distance = speed * time, over one or two legs of a trip."""
    name, _, his = draw.choice(PEOPLE)
    vehicle = draw.choice(VEHICLES)
    b = Builder()
    if num_ops == 2 and draw.chance(0.5):
        return _same_speed(draw, b, name, vehicle, mv)
    v1, t1 = b.given("v1", _speed(draw, mv)), b.given("t1", small(draw, mv))
    leg1 = _leg("d1", v1, t1, name, "first")
    if num_ops == 2:
        route = b.given("route", b.givens[v1] * b.givens[t1] + 5 * draw.int(1, mv))
        question = (
            f"{name} drives a {vehicle} at {b.givens[v1]} km per hour for {b.givens[t1]} hours. "
            f"The whole route is {b.givens[route]} km long. How many km are left?"
        )
        return b.problem(question, [leg1, _left(route, "d1", name)])
    v2, t2 = b.given("v2", _speed(draw, mv)), b.given("t2", small(draw, mv))
    leg2 = _leg("d2", v2, t2, name, "second")
    both = step(
        "both",
        "d1",
        "+",
        "d2",
        "the distance driven",
        "km",
        f"Altogether {name} drives {{eq}} km",
        "Both parts add up to {eq} km",
    )
    stem = (
        f"{name} drives a {vehicle} at {b.givens[v1]} km per hour for {b.givens[t1]} hours, "
        f"then at {b.givens[v2]} km per hour for {b.givens[t2]} hours."
    )
    if num_ops == 3:
        return b.problem(f"{stem} How many km does {name} drive in total?", [leg1, leg2, both])
    driven = b.givens[v1] * b.givens[t1] + b.givens[v2] * b.givens[t2]
    route = b.given("route", driven + 5 * draw.int(1, mv))
    question = (
        f"{stem} {his.capitalize()} whole route is {b.givens[route]} km long. How many km are left?"
    )
    return b.problem(
        question,
        [leg1, leg2, both, _left(route, "both", name)],
        _leg_by_leg(route, leg1, leg2, name),
    )


def _speed(draw: Draw, mv: int) -> int:
    """A speed in km per hour, a multiple of 5."""
    return 5 * draw.int(2, max(3, mv // 2))


def _same_speed(draw: Draw, b: Builder, name: str, vehicle: str, mv: int) -> Optional[Problem]:
    """The two-step story that divides first: the speed from one stretch, then the distance
    of a second stretch at that speed."""
    t = draw.int(2, max(3, mv // 4))
    d, t = b.given("d", _speed(draw, mv) * t), b.given("t", t)
    t2 = b.given("t2", small(draw, mv))
    speed = step(
        "speed",
        d,
        "/",
        t,
        f"the speed of the {vehicle}",
        "km per hour",
        f"The {vehicle} goes {{eq}} km every hour",
        f"{name} drives {{eq}} km per hour",
    )
    more = step(
        "more",
        "speed",
        "*",
        t2,
        "the distance in the extra hours",
        "km",
        f"In the extra hours, {name} drives {{eq}} km",
        "The extra distance is {eq} km",
    )
    question = (
        f"{name} drives a {vehicle} {b.givens[d]} km in {b.givens[t]} hours at a steady speed. "
        f"How far does {name} go in {b.givens[t2]} more hours at the same speed?"
    )
    return b.problem(question, [speed, more])


def _leg_by_leg(route: str, leg1: Step, leg2: Step, name: str) -> list[Step]:
    """The alternative plan of the four-step story: each leg taken off the route in turn."""
    after1 = step(
        "after1",
        route,
        "-",
        "d1",
        "the distance left after the first part",
        "km",
        "After the first part, {eq} km remain",
        f"{name} has {{eq}} km left after the first part",
    )
    left2 = step(
        "left",
        "after1",
        "-",
        "d2",
        "the distance still to go",
        "km",
        "After the second part, {eq} km remain",
        f"{name} still has {{eq}} km to go",
    )
    return [leg1, leg2, after1, left2]


def _leg(result: str, speed: str, hours: str, name: str, part: str) -> Step:
    """The distance of one leg (`part` is "first" or "second")."""
    return step(
        result,
        speed,
        "*",
        hours,
        f"the distance of the {part} part",
        "km",
        f"In the {part} part, {name} covers {{eq}} km",
        f"The {part} part of the trip is {{eq}} km",
    )


def _left(route: str, driven: str, name: str) -> Step:
    """The distance still to go."""
    return step(
        "left",
        route,
        "-",
        driven,
        "the distance still to go",
        "km",
        f"{name} still has {{eq}} km to go",
        "The distance left is {eq} km",
    )
