"""The seven story types, each a function `(draw, num_ops, max_value) -> Problem | None`.

A story writes one question with `num_ops` operations, or returns None when its draw does
not fit (the caller draws again). Alternative plans reach the same answer another way.
The order of `TEMPLATES` is part of the corpus: the generator draws a story by position.
"""

from __future__ import annotations

from typing import Callable, Optional

from t5x_rationale.data.synthetic.problems import Problem
from t5x_rationale.data.synthetic.sampling import Draw
from t5x_rationale.data.synthetic.stories.baking import baking
from t5x_rationale.data.synthetic.stories.classroom import classroom
from t5x_rationale.data.synthetic.stories.garden import garden
from t5x_rationale.data.synthetic.stories.savings import savings
from t5x_rationale.data.synthetic.stories.sharing import sharing
from t5x_rationale.data.synthetic.stories.shopping import shopping
from t5x_rationale.data.synthetic.stories.travel import travel

TEMPLATES: dict[str, Callable[[Draw, int, int], Optional[Problem]]] = {
    "shopping": shopping,
    "sharing": sharing,
    "savings": savings,
    "travel": travel,
    "baking": baking,
    "classroom": classroom,
    "garden": garden,
}
