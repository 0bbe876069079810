"""How a teacher words a computed plan: sentence styles, connectors and step orders.

A rationale is one sentence per step, each showing its computation as ``a * b = c``, in one
of the `STYLES`, in an order the plan allows (`valid_orders`), ending with
``The answer is N.``
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from typing import Callable, Sequence

from t5x_rationale.data.synthetic.problems import Line, Plan
from t5x_rationale.data.synthetic.sampling import Draw
from t5x_rationale.data.synthetic.words import PEOPLE, TITLES

_PROPER_WORDS = frozenset([p[0] for p in PEOPLE] + list(TITLES))
_OP_PHRASES = {
    "+": "adding {a} and {b}",
    "-": "subtracting {b} from {a}",
    "*": "multiplying {a} by {b}",
    "/": "dividing {a} by {b}",
}


def _starts_with_name(text: str) -> bool:
    """Whether the text opens with a proper name (which keeps its capital letter)."""
    first = text.split(" ", 1)[0]
    return first.split("'", 1)[0] in _PROPER_WORDS


def _sentence(connector: str, clause: str) -> str:
    """`connector + clause` as one sentence: capitalised, ending in a full stop."""
    if connector and not _starts_with_name(clause) and not clause[:1].isdigit():
        clause = clause[:1].lower() + clause[1:]
    text = connector + clause
    return text[:1].upper() + text[1:] + "."


def _with_unit(line: Line) -> str:
    """The equation followed by the unit of its result ("3 * 4 = 12 dollars")."""
    return f"{line.equation} {line.step.unit}" if line.step.unit else line.equation


@dataclasses.dataclass(frozen=True)
class Style:
    """One way a teacher words its steps: clause builder, connectors by position, optional
    opener."""

    clause: Callable[[Line, Draw], str]
    first: tuple[str, ...]
    middle: tuple[str, ...]
    last: tuple[str, ...]
    openers: tuple[str, ...] = ("",)


def _narrative(line: Line, draw: Draw) -> str:
    return draw.choice(line.step.says).replace("{eq}", line.equation)


def _described(line: Line, draw: Draw) -> str:
    return f"{line.step.desc} is {_with_unit(line)}"


def _computed(line: Line, draw: Draw) -> str:
    frame = draw.choice(
        (
            "to find {desc}, we compute {eq}",
            "to get {desc}, we work out {eq}",
            "we find {desc} with {eq}",
        )
    )
    return frame.format(desc=line.step.desc, eq=line.equation)


def _operational(line: Line, draw: Draw) -> str:
    verb = _OP_PHRASES[line.op].format(a=line.a, b=line.b)
    return f"{verb} gives {line.step.desc}: {_with_unit(line)}"


def _consequence(line: Line, draw: Draw) -> str:
    frame = draw.choice(
        ("{desc} comes to {eq}", "{desc} works out to {eq}", "we get {eq} for {desc}")
    )
    return frame.format(desc=line.step.desc, eq=_with_unit(line))


STYLES = (
    Style(_narrative, ("", "First, "), ("Then ", "Next, ", ""), ("So ", "Finally, ", "")),
    Style(
        _described, ("First, ", ""), ("Next, ", "Then ", ""), ("So ", "Finally, ", "This means ")
    ),
    Style(
        _computed,
        ("", "First, "),
        ("Next, ", "Then ", ""),
        ("Finally, ", "Last, ", ""),
        ("Let's solve this step by step. ", "We can work this out step by step. ", ""),
    ),
    Style(_operational, ("", "First, "), ("Next, ", "Then ", ""), ("Finally, ", "")),
    Style(
        _consequence,
        ("", "To begin, "),
        ("", "Next, ", "After that, "),
        ("That means ", "In the end, ", ""),
    ),
)


@functools.lru_cache(maxsize=None)
def _step_orders(dependencies: tuple[frozenset[int], ...]) -> tuple[tuple[int, ...], ...]:
    """Every order of the steps in which each step comes after the steps it uses and the
    answer comes last."""
    orders = []
    last = len(dependencies) - 1
    for order in itertools.permutations(range(len(dependencies))):
        if order[-1] != last:
            continue
        position = {s: i for i, s in enumerate(order)}
        if all(position[d] < position[s] for s, deps in enumerate(dependencies) for d in deps):
            orders.append(order)
    return tuple(orders)


def valid_orders(plan: Plan) -> tuple[tuple[int, ...], ...]:
    """The step orders a rationale may follow for this plan (the plan's own order first)."""
    producer = {s.result: i for i, s in enumerate(plan)}
    dependencies = tuple(
        frozenset(producer[n] for n in (s.left, s.right) if n in producer) for s in plan
    )
    return _step_orders(dependencies)


def render(lines: Sequence[Line], order: Sequence[int], style: Style, draw: Draw) -> str:
    """The rationale text: one sentence per step in `order`, then "The answer is N."."""
    sentences = [draw.choice(style.openers).strip()]
    for position, index in enumerate(order):
        line = lines[index]
        # A teacher may write a commutative step either way round.
        if line.op in "+*" and draw.chance(0.25):
            line = Line(line.step, line.b, line.op, line.a, line.c)
        if position == 0:
            connectors = style.first
        elif position == len(order) - 1:
            connectors = style.last
        else:
            connectors = style.middle
        sentences.append(_sentence(draw.choice(connectors), style.clause(line, draw)))
    sentences.append(f"The answer is {lines[-1].c}.")
    return " ".join(s for s in sentences if s)
