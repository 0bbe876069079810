"""Classroom stories: desks, classes, teams and supplies at a school."""

from __future__ import annotations

from typing import Optional

from t5x_rationale.data.synthetic.problems import Builder, Problem, Step, step
from t5x_rationale.data.synthetic.sampling import Draw, small
from t5x_rationale.data.synthetic.words import CLASS_ITEMS, SURNAMES, TITLES


def classroom(draw: Draw, num_ops: int, mv: int) -> Optional[Problem]:
    """Desks, classes, teams and supplies at a school."""
    teacher = f"{draw.choice(TITLES)} {draw.choice(SURNAMES)}"
    b = Builder()
    if num_ops == 2:
        return _students_in_class(draw, b, teacher, mv)
    c, s = b.given("c", small(draw, mv)), b.given("s", draw.int(12, max(13, mv)))
    students = step(
        "students",
        c,
        "*",
        s,
        "the number of students",
        "students",
        "The school has {eq} students",
        "There are {eq} students in all",
    )
    if num_ops == 3:
        return _teams(draw, b, students)
    return _packs_to_buy(draw, b, teacher, students)


def _students_in_class(draw: Draw, b: Builder, teacher: str, mv: int) -> Optional[Problem]:
    """Two steps: the desks of a classroom, minus the empty ones."""
    r, s = b.given("r", small(draw, mv) + 1), b.given("s", small(draw, mv) + 1)
    empty = b.given("empty", draw.int(1, b.givens[r] * b.givens[s] - 1))
    desks = step(
        "desks",
        r,
        "*",
        s,
        "the number of desks",
        "desks",
        "The room has {eq} desks",
        "There are {eq} desks in all",
    )
    present = step(
        "present",
        "desks",
        "-",
        empty,
        "the number of students",
        "students",
        "{eq} students are in class",
        "The students fill {eq} desks",
    )
    question = (
        f"{teacher}'s classroom has {b.givens[r]} rows of {b.givens[s]} desks. Today "
        f"{b.givens[empty]} desks are empty. How many students are in class?"
    )
    return b.problem(question, [desks, present])


def _teams(draw: Draw, b: Builder, students: Step) -> Optional[Problem]:
    """Three steps: the students of a school, minus the absent ones, in teams."""
    g = b.given("g", draw.int(2, 8))
    total = b.givens["c"] * b.givens["s"]
    absent = b.given("absent", draw.int(0, 2) * b.givens[g] + total % b.givens[g])
    if b.givens[absent] == 0:
        return None
    present = step(
        "present",
        "students",
        "-",
        absent,
        "the number of students present",
        "students",
        "{eq} students are present",
        "That leaves {eq} students",
    )
    teams = step(
        "teams",
        "present",
        "/",
        g,
        "the number of teams",
        "teams",
        "They make {eq} teams",
        "There are {eq} teams",
    )
    question = (
        f"A school has {b.givens['c']} classes with {b.givens['s']} students each. "
        f"{b.givens[absent]} students are absent, and the rest play in teams of {b.givens[g]}. "
        "How many teams are there?"
    )
    return b.problem(question, [students, present, teams])


def _packs_to_buy(draw: Draw, b: Builder, teacher: str, students: Step) -> Optional[Problem]:
    """Four steps: supplies for every student of a school, in packs, minus the packs at hand."""
    item = draw.choice(CLASS_ITEMS)
    p, sheet = b.given("p", draw.int(2, 6)), b.given("sheet", draw.choice((5, 10, 12, 20, 25)))
    needed_value = b.givens["c"] * b.givens["s"] * b.givens[p]
    if needed_value % b.givens[sheet]:
        return None
    h = b.given("h", draw.int(0, needed_value // b.givens[sheet] - 1))
    if b.givens[h] == 0:
        return None
    question = (
        f"{teacher} gives each student {b.givens[p]} {item}. There are {b.givens['c']} classes "
        f"with {b.givens['s']} students each. The {item} come in packs of {b.givens[sheet]}, and "
        f"{teacher} already has {b.givens[h]} packs. How many more packs must {teacher} buy?"
    )
    return b.problem(question, *_supply_plans(teacher, item, students))


def _supply_plans(teacher: str, item: str, students: Step) -> tuple[list[Step], list[Step]]:
    """Supplies for all the students at once, or per class times the classes; then packs."""
    needed = step(
        "needed",
        "students",
        "*",
        "p",
        f"the number of {item} needed",
        item,
        f"{teacher} needs {{eq}} {item}",
        f"The students need {{eq}} {item}",
    )
    per_class = step(
        "per_class",
        "s",
        "*",
        "p",
        f"the number of {item} for one class",
        item,
        f"One class needs {{eq}} {item}",
        f"Each class gets {{eq}} {item}",
    )
    needed2 = step(
        "needed",
        "per_class",
        "*",
        "c",
        f"the number of {item} needed",
        item,
        f"All the classes need {{eq}} {item}",
        f"{teacher} needs {{eq}} {item}",
    )
    packs = step(
        "packs",
        "needed",
        "/",
        "sheet",
        "the number of packs needed",
        "packs",
        "That is {eq} packs",
        f"{teacher} needs {{eq}} packs",
    )
    more = step(
        "more",
        "packs",
        "-",
        "h",
        "the number of packs to buy",
        "packs",
        f"{teacher} must buy {{eq}} more packs",
        "{eq} packs are still missing",
    )
    return [students, needed, packs, more], [per_class, needed2, packs, more]
