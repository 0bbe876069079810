"""The shipped rationale corpus: seeded multi-step arithmetic word problems with rationales.

The methods in this project learn from teacher rationales: step-by-step explanations that a
large teacher LLM writes for each training question, several per question (diverse
reasoning), plus incorrect ones (contrastive training). This module is the stand-in for that
teacher: a deterministic generator of arithmetic word problems whose rationales are written
the way such a teacher writes them, so every method runs, and can be tested, with no
downloaded data and no teacher model.

Questions
    Seven story types (shopping, sharing, savings, travel, baking, classrooms, gardens), each
    with 2 to 4 operations among +, -, * and / (exact integer division). Every stated number,
    intermediate result and answer is a non-negative integer. `Difficulty` sets the number of
    operations and the size of the sampled numbers (`DIFFICULTY_LEVELS` holds three presets).

Rationales
    Full sentences, one per computation step, each showing its computation as ``a * b = c``,
    ending with ``The answer is N.`` The rationales of one question are distinct: each has its
    own wording style and, where the problem allows it, its own step order or decomposition.

Negatives
    Incorrect rationales with exactly one realistic mistake: an arithmetic slip in one step
    (off by one, off by ten, a dropped carry or borrow, one times-table row off), the wrong
    operation in one step, or a wrong number copied from the question. Later steps compute
    correctly from the wrong value, so the mistake carries through to a wrong final answer,
    recorded in the parallel ``negative_labels`` list.

Rows follow the teacher-JSONL schema of `sources.py`::

    {"id": str, "input": str, "label": str, "rationales": [str, ...],
     "negatives": [str, ...], "negative_labels": [str, ...]}

Splits
    "train", "validation" and "test" are disjoint by question text: a question's split is
    fixed by a SHA-256 hash of its text (90 / 5 / 5 per cent of the question space), and
    each split keeps only the questions hashed to it, without duplicates. All randomness
    comes from numpy Generators seeded with explicit integers, so a seed gives the same
    rows, byte for byte, in every process.

This module uses only the standard library and numpy (no TensorFlow, no seqio).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import itertools
import json
import os
from typing import Callable, Optional, Sequence, Union

import numpy as np

SPLITS = ("train", "validation", "test")
DEFAULT_SIZES = {"train": 20000, "validation": 500, "test": 500}
DEFAULT_SEED = 0
DEFAULT_NUM_RATIONALES = 3
DEFAULT_NUM_NEGATIVES = 2

# Share of the question space (per mille of the question hash) that each split owns.
_SPLIT_PER_MILLE = {"train": (0, 900), "validation": (900, 950), "test": (950, 1000)}
# Tries per requested row before `generate_split` gives up (only tiny question spaces hit it).
_TRIES_PER_ROW = 200
_SYMBOLS = ("+", "-", "*", "/")


# ---------------------------------------------------------------------------- difficulty


@dataclasses.dataclass(frozen=True)
class Difficulty:
    """How hard the questions are.

    Attributes:
      min_ops, max_ops: the number of arithmetic operations per question (2 to 4).
      max_value: the largest count, price or rate sampled for a question. Quantities that a
        story derives to keep the arithmetic whole (a banknote that covers a bill, a bag
        of flour big enough for the batches) can be larger.
    """

    min_ops: int = 2
    max_ops: int = 4
    max_value: int = 40

    def __post_init__(self):
        if not 2 <= self.min_ops <= self.max_ops <= 4:
            raise ValueError(
                f"need 2 <= min_ops <= max_ops <= 4, got {self.min_ops}, {self.max_ops}"
            )
        if self.max_value < 10:
            raise ValueError(f"max_value must be at least 10, got {self.max_value}")


DIFFICULTY_LEVELS = {
    1: Difficulty(min_ops=2, max_ops=2, max_value=12),
    2: Difficulty(min_ops=2, max_ops=3, max_value=30),
    3: Difficulty(min_ops=3, max_ops=4, max_value=60),
}
DEFAULT_DIFFICULTY = Difficulty()
DifficultyLike = Union[int, Difficulty]


def as_difficulty(difficulty: DifficultyLike) -> Difficulty:
    """A `Difficulty` from a preset level (1, 2, 3) or a `Difficulty` itself."""
    if isinstance(difficulty, Difficulty):
        return difficulty
    if difficulty in DIFFICULTY_LEVELS:
        return DIFFICULTY_LEVELS[difficulty]
    raise ValueError(
        f"difficulty must be a Difficulty or one of {sorted(DIFFICULTY_LEVELS)}, got {difficulty!r}"
    )


# ---------------------------------------------------------------------------- randomness


class _Draw:
    """Scalar draws from one seeded numpy Generator, buffered because scalar numpy calls are slow."""

    def __init__(self, seed_words: Sequence[int]):
        self._rng = np.random.default_rng([int(w) for w in seed_words])
        self._buffer: list[float] = []  # consumed from the end

    def uniform(self) -> float:
        """A float in [0, 1)."""
        if not self._buffer:
            self._buffer = self._rng.random(4096).tolist()[::-1]
        return self._buffer.pop()

    def int(self, low: int, high: int) -> int:
        """An integer in [low, high], both included."""
        return low + int(self.uniform() * (high - low + 1))

    def choice(self, options: Sequence):
        """One element of a non-empty sequence."""
        return options[int(self.uniform() * len(options))]

    def chance(self, probability: float) -> bool:
        """True with the given probability."""
        return self.uniform() < probability

    def shuffled(self, items: Sequence) -> list:
        """A new list with the items in random order (Fisher-Yates)."""
        out = list(items)
        for i in range(len(out) - 1, 0, -1):
            j = int(self.uniform() * (i + 1))
            out[i], out[j] = out[j], out[i]
        return out


# ---------------------------------------------------------------------------- problems


@dataclasses.dataclass(frozen=True)
class Step:
    """One computation of a solution plan: `result = left op right`, with its wordings.

    `left` and `right` name stated numbers or earlier results; `desc` is a noun phrase for
    the result ("the cost of the pens"), `unit` its unit ("dollars", may be ""), and `says`
    narrative sentences with an `{eq}` slot ("Maria spends {eq} dollars on pens").
    """

    result: str
    left: str
    op: str
    right: str
    desc: str
    unit: str
    says: tuple[str, ...]


Plan = tuple[Step, ...]


@dataclasses.dataclass(frozen=True)
class Problem:
    """A question, the numbers it states, and one or more plans that all reach its answer."""

    question: str
    givens: dict[str, int]
    plans: tuple[Plan, ...]


def _apply(op: str, a: int, b: int) -> Optional[int]:
    """`a op b`, or None when the result is negative or the division is not exact."""
    if op == "+":
        return a + b
    if op == "-":
        return a - b if a >= b else None
    if op == "*":
        return a * b
    return a // b if b > 0 and a % b == 0 else None


@dataclasses.dataclass(frozen=True)
class Mistake:
    """The one error of a negative rationale, made at plan step `step`.

    kind "slip": the step writes `value` as its result; "operation": it uses `op`;
    "operand": its operand on `side` ("left" or "right") is `value` instead of the stated number.
    """

    kind: str
    step: int
    value: int = 0
    op: str = ""
    side: str = ""


@dataclasses.dataclass(frozen=True)
class Line:
    """One computed step as written: `a op b = c`."""

    step: Step
    a: int
    op: str
    b: int
    c: int

    @property
    def equation(self) -> str:
        """The computation as a rationale shows it."""
        return f"{self.a} {self.op} {self.b} = {self.c}"


def run_plan(
    plan: Plan, givens: dict[str, int], mistake: Optional[Mistake] = None
) -> Optional[list[Line]]:
    """The lines of a plan (with an optional mistake), or None if some step is not a whole number >= 0."""
    values = dict(givens)
    lines = []
    for index, step in enumerate(plan):
        a, op, b = values[step.left], step.op, values[step.right]
        here = mistake if mistake is not None and mistake.step == index else None
        if here is not None and here.kind == "operand":
            a, b = (here.value, b) if here.side == "left" else (a, here.value)
        if here is not None and here.kind == "operation":
            op = here.op
        c = _apply(op, a, b)
        if c is None:
            return None
        if here is not None and here.kind == "slip":
            c = here.value
        values[step.result] = c
        lines.append(Line(step, a, op, b, c))
    return lines


class _Builder:
    """Collects the stated numbers and the steps of a problem while a template writes it."""

    def __init__(self):
        self.givens: dict[str, int] = {}

    def given(self, name: str, value: int) -> str:
        """Records a number stated in the question."""
        self.givens[name] = int(value)
        return name

    def problem(
        self, question: str, primary: Sequence[Step], *alternatives: Sequence[Step]
    ) -> Optional[Problem]:
        """The problem, or None if the primary plan has a step that is not a whole number >= 0.

        Alternative plans are kept only if they are whole too, take as many steps and reach the
        same answer.
        """
        lines = run_plan(tuple(primary), self.givens)
        if lines is None:
            return None
        plans = [tuple(primary)]
        for plan in alternatives:
            other = run_plan(tuple(plan), self.givens)
            if other is not None and other[-1].c == lines[-1].c and len(plan) == len(primary):
                plans.append(tuple(plan))
        return Problem(question, dict(self.givens), tuple(plans))


def step(result: str, left: str, op: str, right: str, desc: str, unit: str, *says: str) -> Step:
    """Shorthand for a `Step`."""
    return Step(result, left, op, right, desc, unit, tuple(says))


# ---------------------------------------------------------------------------- word lists

_PEOPLE = (
    ("Maria", "she", "her"),
    ("Ahmed", "he", "his"),
    ("Chen", "he", "his"),
    ("Priya", "she", "her"),
    ("Lucas", "he", "his"),
    ("Amara", "she", "her"),
    ("Jonas", "he", "his"),
    ("Sofia", "she", "her"),
    ("Kenji", "he", "his"),
    ("Fatima", "she", "her"),
    ("Diego", "he", "his"),
    ("Olga", "she", "her"),
    ("Tom", "he", "his"),
    ("Aisha", "she", "her"),
    ("Mateo", "he", "his"),
    ("Hana", "she", "her"),
    ("Liam", "he", "his"),
    ("Zara", "she", "her"),
    ("Noah", "he", "his"),
    ("Elena", "she", "her"),
    ("Ravi", "he", "his"),
    ("Mia", "she", "her"),
    ("Omar", "he", "his"),
    ("Grace", "she", "her"),
    ("Ivan", "he", "his"),
    ("Nadia", "she", "her"),
    ("Leo", "he", "his"),
    ("Yuki", "she", "her"),
    ("Samuel", "he", "his"),
    ("Ines", "she", "her"),
    ("Kofi", "he", "his"),
    ("Rosa", "she", "her"),
    ("Ben", "he", "his"),
    ("Layla", "she", "her"),
    ("Arjun", "he", "his"),
    ("Clara", "she", "her"),
    ("Tariq", "he", "his"),
    ("Emma", "she", "her"),
    ("Pablo", "he", "his"),
    ("Sara", "she", "her"),
)
_SURNAMES = (
    "Lee",
    "Patel",
    "Garcia",
    "Novak",
    "Okafor",
    "Kim",
    "Silva",
    "Brown",
    "Haddad",
    "Ito",
    "Mensah",
    "Larsen",
    "Costa",
    "Nguyen",
    "Weber",
    "Rossi",
)
_GOODS = (
    ("notebook", "notebooks"),
    ("pen", "pens"),
    ("apple", "apples"),
    ("toy car", "toy cars"),
    ("comic book", "comic books"),
    ("T-shirt", "T-shirts"),
    ("mango", "mangoes"),
    ("sandwich", "sandwiches"),
    ("candle", "candles"),
    ("ball", "balls"),
    ("puzzle", "puzzles"),
    ("plant pot", "plant pots"),
    ("bottle of juice", "bottles of juice"),
    ("scarf", "scarves"),
    ("box of crayons", "boxes of crayons"),
    ("pair of socks", "pairs of socks"),
    ("mug", "mugs"),
    ("bar of soap", "bars of soap"),
    ("kite", "kites"),
    ("lamp", "lamps"),
)
_SHOPS = ("the market", "a bookshop", "the mall", "a corner shop", "the school fair", "a toy store")
_SNACKS = (
    "cookies",
    "stickers",
    "marbles",
    "grapes",
    "crackers",
    "candies",
    "cards",
    "strawberries",
    "pretzels",
    "buttons",
)
_CONTAINERS = (
    ("box", "boxes"),
    ("bag", "bags"),
    ("pack", "packs"),
    ("jar", "jars"),
    ("tin", "tins"),
)
_BIG_BUYS = (
    "a bike",
    "a video game",
    "a tennis racket",
    "a pair of shoes",
    "a guitar",
    "a telescope",
    "a tablet case",
    "a skateboard",
)
_GAMES = (
    ("board game", "board games"),
    ("book", "books"),
    ("puzzle", "puzzles"),
    ("ticket", "tickets"),
)
_VEHICLES = ("car", "bus", "train", "truck", "motorbike", "van")
_BAKES = ("muffins", "cookies", "rolls", "cupcakes", "scones", "biscuits")
_OTHER_BAKES = ("pancakes", "waffles", "brownies", "tarts", "cakes", "pies")
_CROPS = (
    ("tomato", "tomatoes"),
    ("pepper", "peppers"),
    ("cucumber", "cucumbers"),
    ("pumpkin", "pumpkins"),
    ("strawberry", "strawberries"),
    ("lemon", "lemons"),
)
_CLASS_ITEMS = ("stickers", "pencils", "erasers", "bookmarks", "crayons")
_BANKNOTES = (10, 20, 50, 100, 200, 500, 1000, 2000)


def _small(draw: _Draw, max_value: int) -> int:
    """A small count (rows, batches, hours): 2 .. max(3, max_value // 4)."""
    return draw.int(2, max(3, max_value // 4))


def _medium(draw: _Draw, max_value: int) -> int:
    """A medium count or price: 2 .. max(5, max_value // 2)."""
    return draw.int(2, max(5, max_value // 2))


def _large(draw: _Draw, max_value: int) -> int:
    """A count, price or rate up to max_value."""
    return draw.int(3, max_value)


def _banknote(draw: _Draw, at_least: int) -> int:
    """A banknote of at least `at_least` dollars (the smallest such note or the next one)."""
    notes = [n for n in _BANKNOTES if n >= at_least] or [((at_least // 1000) + 1) * 1000]
    return draw.choice(notes[:2])


def _divisors(n: int, low: int, high: int) -> list[int]:
    """Divisors of n within [low, high]."""
    return [d for d in range(low, high + 1) if n % d == 0]


# ---------------------------------------------------------------------------- story templates
# Each template writes one question with `num_ops` operations, or returns None when its draw
# does not fit (the caller draws again). Alternative plans reach the same answer another way.


def _shopping(draw: _Draw, num_ops: int, mv: int) -> Optional[Problem]:
    """Buying goods at a unit price, possibly two kinds, possibly paying with a banknote."""
    name, _, _ = draw.choice(_PEOPLE)
    (one1, many1), (one2, many2) = draw.shuffled(_GOODS)[:2]
    shop = draw.choice(_SHOPS)
    b = _Builder()
    n1, p1 = b.given("n1", _small(draw, mv) + 1), b.given("p1", _medium(draw, mv))
    cost1 = step(
        "cost1",
        n1,
        "*",
        p1,
        f"the cost of the {many1}",
        "dollars",
        f"{name} spends {{eq}} dollars on {many1}",
        f"The {many1} cost {{eq}} dollars",
    )
    if num_ops == 2:
        note = b.given("note", _banknote(draw, b.givens[n1] * b.givens[p1]))
        question = (
            f"{name} buys {b.givens[n1]} {many1} at {shop} for {b.givens[p1]} dollars each and pays "
            f"with a {b.givens[note]}-dollar bill. How much change does {name} get?"
        )
        change = step(
            "change",
            note,
            "-",
            "cost1",
            f"{name}'s change",
            "dollars",
            f"{name} gets {{eq}} dollars back",
            "The change is {eq} dollars",
        )
        return b.problem(question, [cost1, change])
    n2, p2 = b.given("n2", _small(draw, mv) + 1), b.given("p2", _medium(draw, mv))
    cost2 = step(
        "cost2",
        n2,
        "*",
        p2,
        f"the cost of the {many2}",
        "dollars",
        f"{name} spends {{eq}} dollars on {many2}",
        f"The {many2} cost {{eq}} dollars",
    )
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
    spent = b.givens[n1] * b.givens[p1] + b.givens[n2] * b.givens[p2]
    note = b.given("note", _banknote(draw, spent))
    question = (
        f"{stem} {name} pays with a {b.givens[note]}-dollar bill. How much change does {name} get?"
    )
    change = step(
        "change",
        note,
        "-",
        "total",
        f"{name}'s change",
        "dollars",
        f"{name} gets {{eq}} dollars back",
        "The change is {eq} dollars",
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
    change2 = step(
        "change",
        "after1",
        "-",
        "cost2",
        f"{name}'s change",
        "dollars",
        f"After the {many2}, {name} gets {{eq}} dollars back",
        "The change is {eq} dollars",
    )
    return b.problem(question, [cost1, cost2, total, change], [cost1, cost2, after1, change2])


def _sharing(draw: _Draw, num_ops: int, mv: int) -> Optional[Problem]:
    """Containers of snacks shared equally among friends, some eaten or added first."""
    name, _, his = draw.choice(_PEOPLE)
    snack = draw.choice(_SNACKS)
    one, many = draw.choice(_CONTAINERS)
    b = _Builder()
    k, m = b.given("k", _small(draw, mv)), b.given("m", _large(draw, mv))
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
        friends = _divisors(made, 2, 12)
        if not friends:
            return None
        f = b.given("", draw.choice(friends))
        each = step(
            "each",
            "total",
            "/",
            f,
            "the number each friend gets",
            snack,
            f"Each friend gets {{eq}} {snack}",
            f"Sharing them out gives {{eq}} {snack} per friend",
        )
        question = f"{stem} {name} shares them equally among {b.givens[f]} friends. How many {snack} does each friend get?"
        return b.problem(question, [total, each])
    f = b.given("", draw.int(2, 9))
    if num_ops == 3:
        rest_needed = draw.int(1, 3) * b.givens[f] + made % b.givens[f]
        e = b.given("e", rest_needed)
        rest = step(
            "rest",
            "total",
            "-",
            e,
            f"the number of {snack} left to share",
            snack,
            f"{name} has {{eq}} {snack} left to share",
            f"That leaves {{eq}} {snack}",
        )
        each = step(
            "each",
            "rest",
            "/",
            f,
            "the number each friend gets",
            snack,
            f"Each friend gets {{eq}} {snack}",
            f"Sharing them out gives {{eq}} {snack} per friend",
        )
        question = (
            f"{stem} {name} eats {b.givens[e]} of them and shares the rest equally among "
            f"{b.givens[f]} friends. How many {snack} does each friend get?"
        )
        return b.problem(question, [total, rest, each])
    extra = b.given("extra", _medium(draw, mv))
    e = b.given("e", draw.int(1, 3) * b.givens[f] + (made + b.givens[extra]) % b.givens[f])
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
    rest = step(
        "rest",
        "all",
        "-",
        e,
        f"the number of {snack} left to share",
        snack,
        f"{name} has {{eq}} {snack} left to share",
        f"That leaves {{eq}} {snack}",
    )
    each = step(
        "each",
        "rest",
        "/",
        f,
        "the number each friend gets",
        snack,
        f"Each friend gets {{eq}} {snack}",
        f"Sharing them out gives {{eq}} {snack} per friend",
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
        f"{stem} {his.capitalize()} friend gives {name} {b.givens[extra]} more {snack}. {name} eats "
        f"{b.givens[e]} of them and shares the rest equally among {b.givens[f]} friends. "
        f"How many {snack} does each friend get?"
    )
    return b.problem(question, [total, everything, rest, each], [total, eaten_first, rest2, each])


def _savings(draw: _Draw, num_ops: int, mv: int) -> Optional[Problem]:
    """Weekly savings, gifts and purchases."""
    name, _, his = draw.choice(_PEOPLE)
    b = _Builder()
    s, w = b.given("s", _large(draw, mv)), b.given("w", _small(draw, mv) + 1)
    saved_value = b.givens[s] * b.givens[w]
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
        x = b.given("x", draw.int(1, saved_value))
        left = step(
            "left",
            "saved",
            "-",
            x,
            "the money left",
            "dollars",
            f"{name} has {{eq}} dollars left",
            "What remains is {eq} dollars",
        )
        question = (
            f"{stem} Then {name} spends {b.givens[x]} dollars on {draw.choice(_BIG_BUYS)}. "
            f"How much money does {name} have left?"
        )
        return b.problem(question, [saved, left])
    if num_ops == 3:
        h = b.given("h", _large(draw, mv))
        x = b.given("x", draw.int(1, saved_value + b.givens[h]))
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
        left = step(
            "left",
            "total",
            "-",
            x,
            "the money left",
            "dollars",
            f"{name} has {{eq}} dollars left",
            "What remains is {eq} dollars",
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
            f"dollars on {draw.choice(_BIG_BUYS)}. How much money does {name} have now?"
        )
        return b.problem(question, [saved, total, left], [saved, spent_from_savings, left2])
    g = b.given("g", _large(draw, mv))
    one, many = draw.choice(_GAMES)
    n, c = b.given("n", _small(draw, mv)), b.given("c", _medium(draw, mv))
    if b.givens[n] * b.givens[c] > saved_value + b.givens[g]:
        return None
    total = step(
        "total",
        "saved",
        "+",
        g,
        "the money before shopping",
        "dollars",
        f"With the gift, {name} has {{eq}} dollars",
        "In total there are {eq} dollars",
    )
    cost = step(
        "cost",
        n,
        "*",
        c,
        f"the cost of the {many}",
        "dollars",
        f"The {many} cost {{eq}} dollars",
        f"{name} spends {{eq}} dollars on {many}",
    )
    left = step(
        "left",
        "total",
        "-",
        "cost",
        "the money left",
        "dollars",
        f"{name} has {{eq}} dollars left",
        "What remains is {eq} dollars",
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
        g,
        "the money left",
        "dollars",
        f"With the gift, {name} has {{eq}} dollars left",
        "What remains is {eq} dollars",
    )
    question = (
        f"{stem} {his.capitalize()} aunt gives {name} {b.givens[g]} dollars. {name} then buys "
        f"{b.givens[n]} {many} that cost {b.givens[c]} dollars each. How much money does {name} have left?"
    )
    return b.problem(question, [saved, total, cost, left], [saved, cost, rest, left2])


def _travel(draw: _Draw, num_ops: int, mv: int) -> Optional[Problem]:
    """Distance = speed * time, over one or two legs of a trip."""
    name, _, his = draw.choice(_PEOPLE)
    vehicle = draw.choice(_VEHICLES)
    b = _Builder()
    if num_ops == 2 and draw.chance(0.5):
        t = draw.int(2, max(3, mv // 4))
        d, t = b.given("d", 5 * draw.int(2, max(3, mv // 2)) * t), b.given("t", t)
        t2 = b.given("t2", _small(draw, mv))
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
    v1, t1 = b.given("v1", 5 * draw.int(2, max(3, mv // 2))), b.given("t1", _small(draw, mv))
    leg1 = step(
        "d1",
        v1,
        "*",
        t1,
        "the distance of the first part",
        "km",
        f"In the first part, {name} covers {{eq}} km",
        "The first part of the trip is {eq} km",
    )
    if num_ops == 2:
        route = b.given("route", b.givens[v1] * b.givens[t1] + 5 * draw.int(1, mv))
        left = step(
            "left",
            route,
            "-",
            "d1",
            "the distance still to go",
            "km",
            f"{name} still has {{eq}} km to go",
            "The distance left is {eq} km",
        )
        question = (
            f"{name} drives a {vehicle} at {b.givens[v1]} km per hour for {b.givens[t1]} hours. The "
            f"whole route is {b.givens[route]} km long. How many km are left?"
        )
        return b.problem(question, [leg1, left])
    v2, t2 = b.given("v2", 5 * draw.int(2, max(3, mv // 2))), b.given("t2", _small(draw, mv))
    leg2 = step(
        "d2",
        v2,
        "*",
        t2,
        "the distance of the second part",
        "km",
        f"In the second part, {name} covers {{eq}} km",
        "The second part of the trip is {eq} km",
    )
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
        f"{name} drives a {vehicle} at {b.givens[v1]} km per hour for {b.givens[t1]} hours, then at "
        f"{b.givens[v2]} km per hour for {b.givens[t2]} hours."
    )
    if num_ops == 3:
        return b.problem(f"{stem} How many km does {name} drive in total?", [leg1, leg2, both])
    route = b.given(
        "route", b.givens[v1] * b.givens[t1] + b.givens[v2] * b.givens[t2] + 5 * draw.int(1, mv)
    )
    left = step(
        "left",
        route,
        "-",
        "both",
        "the distance still to go",
        "km",
        f"{name} still has {{eq}} km to go",
        "The distance left is {eq} km",
    )
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
    question = (
        f"{stem} {his.capitalize()} whole route is {b.givens[route]} km long. How many km are left?"
    )
    return b.problem(question, [leg1, leg2, both, left], [leg1, leg2, after1, left2])


def _baking(draw: _Draw, num_ops: int, mv: int) -> Optional[Problem]:
    """Batches of baked goods: flour used, boxes filled, eggs left."""
    name, _, _ = draw.choice(_PEOPLE)
    bake = draw.choice(_BAKES)
    b = _Builder()
    if num_ops == 2:
        g, n = b.given("g", 10 * _medium(draw, mv)), b.given("n", _small(draw, mv))
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
    if num_ops == 3:
        m, n = b.given("m", _medium(draw, mv) + 2), b.given("n", _small(draw, mv))
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
    other = draw.choice(_OTHER_BAKES)
    n1, e1 = b.given("n1", _small(draw, mv)), b.given("e1", draw.int(2, 6))
    n2, e2 = b.given("n2", _small(draw, mv)), b.given("e2", draw.int(2, 6))
    needed = b.givens[n1] * b.givens[e1] + b.givens[n2] * b.givens[e2]
    eggs = b.given("eggs", 12 * (needed // 12 + draw.int(1, 3)))
    u1 = step(
        "u1",
        n1,
        "*",
        e1,
        f"the number of eggs for the {bake}",
        "eggs",
        f"The {bake} take {{eq}} eggs",
        f"{name} uses {{eq}} eggs for the {bake}",
    )
    u2 = step(
        "u2",
        n2,
        "*",
        e2,
        f"the number of eggs for the {other}",
        "eggs",
        f"The {other} take {{eq}} eggs",
        f"{name} uses {{eq}} eggs for the {other}",
    )
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
    left = step(
        "left",
        eggs,
        "-",
        "used",
        "the number of eggs left",
        "eggs",
        f"{name} has {{eq}} eggs left",
        "That leaves {eq} eggs",
    )
    after1 = step(
        "after1",
        eggs,
        "-",
        "u1",
        f"the number of eggs left after the {bake}",
        "eggs",
        f"After the {bake}, {name} has {{eq}} eggs",
        f"The {bake} leave {{eq}} eggs",
    )
    left2 = step(
        "left",
        "after1",
        "-",
        "u2",
        "the number of eggs left",
        "eggs",
        f"After the {other}, {name} has {{eq}} eggs left",
        "That leaves {eq} eggs",
    )
    question = (
        f"{name} has {b.givens[eggs]} eggs. {name} bakes {b.givens[n1]} batches of {bake} that need "
        f"{b.givens[e1]} eggs each and {b.givens[n2]} batches of {other} that need {b.givens[e2]} "
        "eggs each. How many eggs are left?"
    )
    return b.problem(question, [u1, u2, used, left], [u1, u2, after1, left2])


def _classroom(draw: _Draw, num_ops: int, mv: int) -> Optional[Problem]:
    """Desks, classes, teams and supplies at a school."""
    teacher = f"{draw.choice(('Mr.', 'Ms.', 'Dr.'))} {draw.choice(_SURNAMES)}"
    b = _Builder()
    if num_ops == 2:
        r, s = b.given("r", _small(draw, mv) + 1), b.given("s", _small(draw, mv) + 1)
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
    c, s = b.given("c", _small(draw, mv)), b.given("s", draw.int(12, max(13, mv)))
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
        g = b.given("g", draw.int(2, 8))
        total = b.givens[c] * b.givens[s]
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
            f"A school has {b.givens[c]} classes with {b.givens[s]} students each. {b.givens[absent]} "
            f"students are absent, and the rest play in teams of {b.givens[g]}. How many teams are there?"
        )
        return b.problem(question, [students, present, teams])
    item = draw.choice(_CLASS_ITEMS)
    p, sheet = b.given("p", draw.int(2, 6)), b.given("sheet", draw.choice((5, 10, 12, 20, 25)))
    per_class_value = b.givens[s] * b.givens[p]
    if (b.givens[c] * per_class_value) % b.givens[sheet]:
        return None
    packs_value = b.givens[c] * per_class_value // b.givens[sheet]
    h = b.given("h", draw.int(0, packs_value - 1))
    if b.givens[h] == 0:
        return None
    needed = step(
        "needed",
        "students",
        "*",
        p,
        f"the number of {item} needed",
        item,
        f"{teacher} needs {{eq}} {item}",
        f"The students need {{eq}} {item}",
    )
    per_class = step(
        "per_class",
        s,
        "*",
        p,
        f"the number of {item} for one class",
        item,
        f"One class needs {{eq}} {item}",
        f"Each class gets {{eq}} {item}",
    )
    needed2 = step(
        "needed",
        "per_class",
        "*",
        c,
        f"the number of {item} needed",
        item,
        f"All the classes need {{eq}} {item}",
        f"{teacher} needs {{eq}} {item}",
    )
    packs = step(
        "packs",
        "needed",
        "/",
        sheet,
        "the number of packs needed",
        "packs",
        "That is {eq} packs",
        f"{teacher} needs {{eq}} packs",
    )
    more = step(
        "more",
        "packs",
        "-",
        h,
        "the number of packs to buy",
        "packs",
        f"{teacher} must buy {{eq}} more packs",
        "{eq} packs are still missing",
    )
    question = (
        f"{teacher} gives each student {b.givens[p]} {item}. There are {b.givens[c]} classes with "
        f"{b.givens[s]} students each. The {item} come in packs of {b.givens[sheet]}, and "
        f"{teacher} already has {b.givens[h]} packs. How many more packs must {teacher} buy?"
    )
    return b.problem(question, [students, needed, packs, more], [per_class, needed2, packs, more])


def _garden(draw: _Draw, num_ops: int, mv: int) -> Optional[Problem]:
    """Rows of plants, their harvest, and baskets for selling it."""
    name, _, his = draw.choice(_PEOPLE)
    one, many = draw.choice(_CROPS)
    b = _Builder()
    r, p = b.given("r", _small(draw, mv)), b.given("p", _small(draw, mv) + 1)
    t = b.given("t", draw.int(2, max(3, mv // 3)))
    plants = step(
        "plants",
        r,
        "*",
        p,
        f"the number of {one} plants",
        "plants",
        f"{name} has {{eq}} plants",
        f"The garden holds {{eq}} {one} plants",
    )
    harvest = step(
        "harvest",
        "plants",
        "*",
        t,
        f"the number of {many} picked",
        many,
        f"{name} picks {{eq}} {many}",
        f"The plants give {{eq}} {many}",
    )
    per_row = step(
        "per_row",
        p,
        "*",
        t,
        f"the number of {many} from one row",
        many,
        f"One row gives {{eq}} {many}",
        f"Each row yields {{eq}} {many}",
    )
    harvest2 = step(
        "harvest",
        "per_row",
        "*",
        r,
        f"the number of {many} picked",
        many,
        f"All rows give {{eq}} {many}",
        f"{name} picks {{eq}} {many}",
    )
    stem = (
        f"{name} plants {b.givens[r]} rows of {one} plants with {b.givens[p]} plants in each row. "
        f"Each plant gives {b.givens[t]} {many}."
    )
    if num_ops == 2:
        return b.problem(
            f"{stem} How many {many} does {name} pick?", [plants, harvest], [per_row, harvest2]
        )
    harvest_value = b.givens[r] * b.givens[p] * b.givens[t]
    if num_ops == 3:
        baskets = _divisors(harvest_value, 3, 15)
        if not baskets:
            return None
        k = b.given("k", draw.choice(baskets))
        count = step(
            "baskets",
            "harvest",
            "/",
            k,
            "the number of baskets",
            "baskets",
            f"{name} fills {{eq}} baskets",
            "That makes {eq} baskets",
        )
        question = f"{stem} {name} packs them in baskets of {b.givens[k]}. How many baskets does {name} fill?"
        return b.problem(question, [plants, harvest, count], [per_row, harvest2, count])
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
    count = step(
        "baskets",
        "rest",
        "/",
        k,
        "the number of baskets",
        "baskets",
        f"{name} fills {{eq}} baskets",
        "That makes {eq} baskets",
    )
    question = (
        f"{stem} {name} keeps {b.givens[keep]} {many} for {his} family and sells the rest in "
        f"baskets of {b.givens[k]}. How many baskets does {name} sell?"
    )
    return b.problem(question, [plants, harvest, rest, count], [per_row, harvest2, rest, count])


TEMPLATES: dict[str, Callable[[_Draw, int, int], Optional[Problem]]] = {
    "shopping": _shopping,
    "sharing": _sharing,
    "savings": _savings,
    "travel": _travel,
    "baking": _baking,
    "classroom": _classroom,
    "garden": _garden,
}


# ---------------------------------------------------------------------------- wording

_PROPER_WORDS = frozenset([p[0] for p in _PEOPLE] + ["Mr.", "Ms.", "Dr."])
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
class _Style:
    """One way a teacher words its steps: clause builder, connectors by position, optional opener."""

    clause: Callable[[Line, _Draw], str]
    first: tuple[str, ...]
    middle: tuple[str, ...]
    last: tuple[str, ...]
    openers: tuple[str, ...] = ("",)


def _narrative(line: Line, draw: _Draw) -> str:
    return draw.choice(line.step.says).replace("{eq}", line.equation)


def _described(line: Line, draw: _Draw) -> str:
    return f"{line.step.desc} is {_with_unit(line)}"


def _computed(line: Line, draw: _Draw) -> str:
    frame = draw.choice(
        (
            "to find {desc}, we compute {eq}",
            "to get {desc}, we work out {eq}",
            "we find {desc} with {eq}",
        )
    )
    return frame.format(desc=line.step.desc, eq=line.equation)


def _operational(line: Line, draw: _Draw) -> str:
    verb = _OP_PHRASES[line.op].format(a=line.a, b=line.b)
    return f"{verb} gives {line.step.desc}: {_with_unit(line)}"


def _consequence(line: Line, draw: _Draw) -> str:
    frame = draw.choice(
        ("{desc} comes to {eq}", "{desc} works out to {eq}", "we get {eq} for {desc}")
    )
    return frame.format(desc=line.step.desc, eq=_with_unit(line))


_STYLES = (
    _Style(_narrative, ("", "First, "), ("Then ", "Next, ", ""), ("So ", "Finally, ", "")),
    _Style(
        _described, ("First, ", ""), ("Next, ", "Then ", ""), ("So ", "Finally, ", "This means ")
    ),
    _Style(
        _computed,
        ("", "First, "),
        ("Next, ", "Then ", ""),
        ("Finally, ", "Last, ", ""),
        ("Let's solve this step by step. ", "We can work this out step by step. ", ""),
    ),
    _Style(_operational, ("", "First, "), ("Next, ", "Then ", ""), ("Finally, ", "")),
    _Style(
        _consequence,
        ("", "To begin, "),
        ("", "Next, ", "After that, "),
        ("That means ", "In the end, ", ""),
    ),
)


@functools.lru_cache(maxsize=None)
def _step_orders(dependencies: tuple[frozenset[int], ...]) -> tuple[tuple[int, ...], ...]:
    """Every order of the steps in which each step comes after the steps it uses and the answer comes last."""
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


def _render(lines: Sequence[Line], order: Sequence[int], style: _Style, draw: _Draw) -> str:
    """The rationale text: one sentence per step in `order`, then "The answer is N."."""
    sentences = [draw.choice(style.openers).strip()]
    for position, index in enumerate(order):
        line = lines[index]
        if line.op in "+*" and draw.chance(
            0.25
        ):  # a teacher may write a commutative step either way
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


@dataclasses.dataclass(frozen=True)
class _Solution:
    """A plan with its computed lines and the step orders a rationale may follow."""

    plan: Plan
    lines: list[Line]
    orders: tuple[tuple[int, ...], ...]


def _solutions(problem: Problem) -> list[_Solution]:
    """Every plan of the problem, solved."""
    return [
        _Solution(plan, run_plan(plan, problem.givens), valid_orders(plan))
        for plan in problem.plans
    ]


def _correct_rationales(solutions: Sequence[_Solution], draw: _Draw, count: int) -> list[str]:
    """`count` distinct correct rationales, spreading styles, plans and step orders across them."""
    styles = draw.shuffled(range(len(_STYLES)))
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
        text = _render(solution.lines, order, _STYLES[styles[attempt % len(styles)]], draw)
        if text not in texts:
            texts.append(text)
            used_orders.add((plan_index, order))
    return texts


# ---------------------------------------------------------------------------- mistakes


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


_WRONG_OPS = {"+": ("-", "*"), "-": ("+",), "*": ("+",), "/": ("*",)}


def _miscopied_values(value: int, givens: dict[str, int]) -> list[int]:
    """Numbers a person might copy instead of `value`: a near miss, swapped digits, or another stated number."""
    values = [value + 1, value - 1, value + 10, value - 10]
    digits = str(value)
    if len(digits) == 2 and digits[1] != "0" and digits[0] != digits[1]:
        values.append(int(digits[::-1]))
    values += list(givens.values())
    return [v for v in values if v > 0 and v != value]


def _random_mistake(
    kind: str, plan: Plan, lines: Sequence[Line], givens: dict[str, int], draw: _Draw
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


def _negative_rationales(
    solutions: Sequence[_Solution], givens: dict[str, int], draw: _Draw, count: int
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
        text = _render(wrong, draw.choice(solution.orders), draw.choice(_STYLES), draw)
        if text not in texts:
            texts.append(text)
            labels.append(label)
    return texts, labels


# ---------------------------------------------------------------------------- splits and rows


def split_of(question: str) -> str:
    """The split that owns a question text (a stable SHA-256 hash, the same in every process)."""
    per_mille = int.from_bytes(hashlib.sha256(question.encode("utf-8")).digest()[:8], "big") % 1000
    for split, (low, high) in _SPLIT_PER_MILLE.items():
        if low <= per_mille < high:
            return split
    raise AssertionError(per_mille)


def _draw_problem(draw: _Draw, difficulty: Difficulty) -> Optional[Problem]:
    """One question of a random story type and operation count (None when the draw did not fit)."""
    num_ops = draw.int(difficulty.min_ops, difficulty.max_ops)
    template = TEMPLATES[draw.choice(tuple(TEMPLATES))]
    return template(draw, num_ops, difficulty.max_value)


def generate_split(
    split: str,
    *,
    num_examples: int,
    seed: int = DEFAULT_SEED,
    difficulty: DifficultyLike = DEFAULT_DIFFICULTY,
    num_rationales: int = DEFAULT_NUM_RATIONALES,
    num_negatives: int = DEFAULT_NUM_NEGATIVES,
) -> list[dict]:
    """`num_examples` rows of one split in the teacher-JSONL schema (deterministic in `seed`).

    Rows are generated one after another from one seeded stream, so a smaller `num_examples`
    gives a prefix of a larger one.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if num_rationales < 1 or num_negatives < 0:
        raise ValueError(
            f"need num_rationales >= 1 and num_negatives >= 0, got {num_rationales}, {num_negatives}"
        )
    difficulty = as_difficulty(difficulty)
    draw = _Draw([int(seed), SPLITS.index(split)])
    seen: set[str] = set()
    rows: list[dict] = []
    for _ in range(_TRIES_PER_ROW * max(num_examples, 1)):
        if len(rows) == num_examples:
            return rows
        problem = _draw_problem(draw, difficulty)
        if problem is None or problem.question in seen or split_of(problem.question) != split:
            continue
        seen.add(problem.question)
        solutions = _solutions(problem)
        negatives, negative_labels = _negative_rationales(
            solutions, problem.givens, draw, num_negatives
        )
        rows.append(
            {
                "id": f"{split}-{len(rows):06d}",
                "input": problem.question,
                "label": str(solutions[0].lines[-1].c),
                "rationales": _correct_rationales(solutions, draw, num_rationales),
                "negatives": negatives,
                "negative_labels": negative_labels,
            }
        )
    if len(rows) < num_examples:
        raise RuntimeError(
            f"only {len(rows)} distinct {split} questions found for {difficulty}; "
            f"asked for {num_examples}"
        )
    return rows


def plain_text(row: dict, rationale_index: int = 0) -> str:
    """The prose view of a row on one line: question, rationale and answer (for LM training)."""
    rationale = row["rationales"][rationale_index]
    if "answer is" not in rationale:
        rationale = f"{rationale} The answer is {row['label']}."
    return " ".join(f"{row['input']} {rationale}".split())


def write_corpus(
    out_dir: str | os.PathLike,
    *,
    sizes: Optional[dict[str, int]] = None,
    seed: int = DEFAULT_SEED,
    difficulty: DifficultyLike = DEFAULT_DIFFICULTY,
) -> dict[str, str]:
    """Writes `{split}.jsonl` (rows) and `{split}.txt` (plain-text view) per split.

    Returns the written paths keyed by file name ("train.jsonl", "train.txt", ...).
    """
    sizes = dict(DEFAULT_SIZES if sizes is None else sizes)
    os.makedirs(out_dir, exist_ok=True)
    paths: dict[str, str] = {}
    for split, size in sizes.items():
        rows = generate_split(split, num_examples=size, seed=seed, difficulty=difficulty)
        jsonl = os.path.join(out_dir, f"{split}.jsonl")
        with open(jsonl, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(row, sort_keys=True) + "\n" for row in rows)
        txt = os.path.join(out_dir, f"{split}.txt")
        with open(txt, "w", encoding="utf-8") as f:
            f.writelines(plain_text(row) + "\n" for row in rows)
        paths[f"{split}.jsonl"], paths[f"{split}.txt"] = jsonl, txt
    return paths
