"""The shipped rationale corpus: seeded multi-step arithmetic word problems with rationales.

The methods in this project learn from teacher rationales: step-by-step explanations that a
large teacher LLM writes for each training question, several per question (diverse
reasoning), plus incorrect ones (contrastive training). This package is the stand-in for
that teacher: a deterministic generator of arithmetic word problems whose rationales are
written the way such a teacher writes them, so every method runs, and can be tested, with
no downloaded data and no teacher model.

Questions (`stories`, `problems`)
    Seven story types (shopping, sharing, savings, travel, baking, classrooms, gardens), each
    with 2 to 4 operations among +, -, * and / (exact integer division). Every stated number,
    intermediate result and answer is a non-negative integer. `Difficulty` sets the number of
    operations and the size of the sampled numbers (`DIFFICULTY_LEVELS` holds three presets).

Rationales (`wording`, `rationales`)
    Full sentences, one per computation step, each showing its computation as ``a * b = c``,
    ending with ``The answer is N.`` The rationales of one question are distinct: each has its
    own wording style and, where the problem allows it, its own step order or decomposition.

Negatives (`mistakes`)
    Incorrect rationales with exactly one realistic mistake, carried through to a wrong final
    answer, recorded in the parallel ``negative_labels`` list.

Rows follow the teacher-JSONL schema of `teacher_jsonl.py`::

    {"id": str, "input": str, "label": str, "rationales": [str, ...],
     "negatives": [str, ...], "negative_labels": [str, ...]}

Splits (`splits`)
    "train", "validation" and "test" are disjoint by question text (a SHA-256 hash of it).
    All randomness comes from numpy Generators seeded with explicit integers (`sampling`),
    so a seed gives the same rows, byte for byte, in every process.

This package uses only the standard library and numpy (no TensorFlow, no seqio).
"""

from t5x_rationale.data.synthetic.problems import (
    DEFAULT_DIFFICULTY,
    DIFFICULTY_LEVELS,
    Difficulty,
    DifficultyLike,
    Line,
    Mistake,
    Plan,
    Problem,
    Step,
    as_difficulty,
    run_plan,
    step,
)
from t5x_rationale.data.synthetic.splits import (
    DEFAULT_NUM_NEGATIVES,
    DEFAULT_NUM_RATIONALES,
    DEFAULT_SEED,
    DEFAULT_SIZES,
    SPLITS,
    answer_text,
    generate_split,
    plain_text,
    split_of,
    write_corpus,
)
from t5x_rationale.data.synthetic.stories import TEMPLATES
from t5x_rationale.data.synthetic.wording import valid_orders

__all__ = [
    "DEFAULT_DIFFICULTY",
    "DEFAULT_NUM_NEGATIVES",
    "DEFAULT_NUM_RATIONALES",
    "DEFAULT_SEED",
    "DEFAULT_SIZES",
    "DIFFICULTY_LEVELS",
    "SPLITS",
    "TEMPLATES",
    "Difficulty",
    "DifficultyLike",
    "Line",
    "Mistake",
    "Plan",
    "Problem",
    "Step",
    "as_difficulty",
    "generate_split",
    "plain_text",
    "answer_text",
    "run_plan",
    "split_of",
    "step",
    "valid_orders",
    "write_corpus",
]
