"""The shipped synthetic corpus: schema, arithmetic, mistakes, splits and determinism.

The checks re-derive everything from the row text with plain reference code: every
``a op b = c`` written in a rationale is parsed and recomputed with Python arithmetic.
"""

from __future__ import annotations

import functools
import json
import os
import re
import subprocess
import sys

import pytest

from t5x_rationale.data import synthetic
from t5x_rationale.data.metrics import extract_answer

ROW_KEYS = {"id", "input", "label", "rationales", "negatives", "negative_labels"}
EQUATION = re.compile(r"(\d+) ([-+*/]) (\d+) = (\d+)")
NUMBER = re.compile(r"\d+")
SIZES = {"train": 1500, "validation": 300, "test": 300}


@functools.lru_cache(maxsize=None)
def rows_of(
    split: str, num_examples: int, seed: int = 0, difficulty=synthetic.DEFAULT_DIFFICULTY
) -> tuple:
    return tuple(
        synthetic.generate_split(split, num_examples=num_examples, seed=seed, difficulty=difficulty)
    )


def all_rows() -> list[dict]:
    return [row for split, size in SIZES.items() for row in rows_of(split, size)]


def reference_result(a: int, op: str, b: int) -> float:
    """What `a op b` is, with Python's own arithmetic (true division)."""
    return {"+": a + b, "-": a - b, "*": a * b, "/": a / b if b else float("nan")}[op]


def equations(text: str) -> list[tuple[int, str, int, int]]:
    return [(int(a), op, int(b), int(c)) for a, op, b, c in EQUATION.findall(text)]


def arithmetic_errors(text: str) -> int:
    """How many written equations are false."""
    return sum(reference_result(a, op, b) != c for a, op, b, c in equations(text))


def untraceable_operands(question: str, text: str) -> int:
    """Operands that are neither a number stated in the question nor an earlier result."""
    known = {int(n) for n in NUMBER.findall(question)}
    missing = 0
    for a, _, b, c in equations(text):
        missing += (a not in known) + (b not in known)
        known.add(c)
    return missing


def final_answer(text: str) -> str:
    match = re.search(r"The answer is (\d+)\.$", text)
    assert match, f"rationale does not end with 'The answer is N.': {text!r}"
    return match.group(1)


def test_rows_follow_the_teacher_schema():
    for row in all_rows():
        assert set(row) == ROW_KEYS
        assert isinstance(row["id"], str) and row["id"]
        assert isinstance(row["input"], str) and row["input"].endswith("?")
        assert row["label"].isdigit()
        assert len(row["rationales"]) == synthetic.DEFAULT_NUM_RATIONALES
        assert (
            len(row["negatives"]) == len(row["negative_labels"]) == synthetic.DEFAULT_NUM_NEGATIVES
        )
        assert all(
            isinstance(t, str) and t and "\n" not in t for t in row["rationales"] + row["negatives"]
        )


def test_correct_rationales_compute_right_and_reach_the_label():
    for row in all_rows():
        for text in row["rationales"]:
            steps = equations(text)
            assert steps, text
            assert arithmetic_errors(text) == 0, text
            assert untraceable_operands(row["input"], text) == 0, text
            assert steps[-1][3] == int(row["label"]), text
            assert final_answer(text) == row["label"]


def test_one_computation_per_sentence():
    for row in all_rows():
        for text in row["rationales"] + row["negatives"]:
            spans = [m.span() for m in EQUATION.finditer(text)]
            for (_, end), (start, _) in zip(spans, spans[1:]):
                assert ". " in text[end:start], text


def test_rationales_of_a_question_are_distinct_and_vary_in_order_or_decomposition():
    rows = all_rows()
    varied = 0
    for row in rows:
        assert len(set(row["rationales"])) == len(row["rationales"])
        varied += len({tuple(equations(t)) for t in row["rationales"]}) > 1
    assert varied > 0.5 * len(rows)  # besides the wording, most questions get other step orders


def test_negatives_have_exactly_one_mistake_and_a_wrong_answer():
    for row in all_rows():
        correct_equations = {e for t in row["rationales"] for e in equations(t)}
        assert len(set(row["negatives"])) == len(row["negatives"])
        for text, wrong_label in zip(row["negatives"], row["negative_labels"]):
            errors = arithmetic_errors(text)
            miscopied = untraceable_operands(row["input"], text)
            assert errors + miscopied <= 1, text  # one slip, or one miscopied number, or neither
            assert not set(equations(text)) <= correct_equations, text  # something is wrong
            assert len(equations(text)) == len(equations(row["rationales"][0]))
            assert final_answer(text) == wrong_label != row["label"]
            assert equations(text)[-1][3] == int(wrong_label)


def test_negatives_cover_every_mistake_kind():
    kinds = {"slip": 0, "miscopy or wrong operation": 0}
    for row in all_rows():
        for text in row["negatives"]:
            kinds["slip" if arithmetic_errors(text) else "miscopy or wrong operation"] += 1
    assert min(kinds.values()) > 0.2 * sum(kinds.values())


def test_splits_are_disjoint_and_free_of_duplicates():
    questions = {
        split: [row["input"] for row in rows_of(split, size)] for split, size in SIZES.items()
    }
    for split, texts in questions.items():
        assert len(set(texts)) == len(texts), split
        assert all(synthetic.split_of(q) == split for q in texts)
    assert not set(questions["train"]) & set(questions["validation"])
    assert not set(questions["train"]) & set(questions["test"])
    assert not set(questions["validation"]) & set(questions["test"])
    ids = [row["id"] for split, size in SIZES.items() for row in rows_of(split, size)]
    assert len(set(ids)) == len(ids)


def test_same_seed_same_rows_other_seed_other_rows():
    first = synthetic.generate_split("validation", num_examples=100, seed=3)
    again = synthetic.generate_split("validation", num_examples=100, seed=3)
    other = synthetic.generate_split("validation", num_examples=100, seed=4)
    assert json.dumps(first, sort_keys=True) == json.dumps(again, sort_keys=True)
    assert [r["input"] for r in first] != [r["input"] for r in other]
    assert synthetic.generate_split("validation", num_examples=30, seed=3) == first[:30]


def test_rows_are_identical_in_another_process_without_tensorflow():
    """Another process (other hash salt) writes the same bytes, and never imports TF or seqio."""
    code = (
        "import json, sys; from t5x_rationale.data import synthetic; "
        "rows = synthetic.generate_split('test', num_examples=50, seed=7); "
        "assert 'tensorflow' not in sys.modules and 'seqio' not in sys.modules, 'imports TF'; "
        "sys.stdout.write(json.dumps(rows, sort_keys=True))"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    here = synthetic.generate_split("test", num_examples=50, seed=7)
    assert out.stdout == json.dumps(here, sort_keys=True)


@pytest.mark.parametrize(
    "difficulty", [1, 3, synthetic.Difficulty(min_ops=3, max_ops=3, max_value=20)]
)
def test_operation_counts_respect_the_difficulty(difficulty):
    level = synthetic.as_difficulty(difficulty)
    rows = rows_of("train", 300, difficulty=difficulty)
    counts = {len(equations(t)) for row in rows for t in row["rationales"] + row["negatives"]}
    assert counts <= set(range(level.min_ops, level.max_ops + 1))
    assert counts == set(range(level.min_ops, level.max_ops + 1))  # every allowed count occurs
    for row in rows:
        for text in row["rationales"]:
            assert arithmetic_errors(text) == 0 and final_answer(text) == row["label"]


def test_difficulty_sets_the_size_of_numbers():
    easy = [
        int(n) for row in rows_of("train", 300, difficulty=1) for n in NUMBER.findall(row["input"])
    ]
    hard = [
        int(n) for row in rows_of("train", 300, difficulty=3) for n in NUMBER.findall(row["input"])
    ]
    assert sorted(easy)[len(easy) // 2] < sorted(hard)[len(hard) // 2]


def test_every_story_type_occurs():
    assert len(synthetic.TEMPLATES) >= 6
    markers = {
        "shopping": r"for \d+ dollars each",
        "sharing": "equally among",
        "savings": "saves",
        "travel": " km",
        "baking": "batch",
        "classroom": "students|desks",
        "garden": "plants",
    }
    questions = [row["input"] for row in all_rows()]
    for story, marker in markers.items():
        assert sum(bool(re.search(marker, q)) for q in questions) > 0.05 * len(questions), story


def test_answers_parse_back_with_the_task_metric():
    for row in all_rows()[:300]:
        for text in row["rationales"]:
            assert extract_answer(text) == row["label"]
        for text, wrong in zip(row["negatives"], row["negative_labels"]):
            assert extract_answer(text) == wrong
        assert extract_answer(synthetic.plain_text(row)) == row["label"]
        assert extract_answer(f"{row['rationales'][0][:-20]} --> {row['label']}") == row["label"]
    assert extract_answer("The answer is 1,200.") == "1200"
    assert extract_answer("3 + 4 = 7 so 7 - 2 = 5 --> 5.0") == "5"
    assert extract_answer("we get 3 then 12") == "12"
    assert extract_answer("the answer is -4") == "-4"
    assert extract_answer("no number here") == "no number here"  # a text label
    assert extract_answer("  ") is None


def test_plain_text_is_one_line_with_question_rationale_and_answer():
    row = rows_of("train", 10)[0]
    text = synthetic.plain_text(row, rationale_index=1)
    assert "\n" not in text
    assert text.startswith(row["input"]) and row["rationales"][1] in text
    assert text.endswith(f"The answer is {row['label']}.")


def test_answer_text_is_the_question_and_answer_without_rationale():
    row = rows_of("train", 10)[0]
    assert synthetic.answer_text(row) == f"{row['input']} The answer is {row['label']}."


def test_text_views_are_registered_and_mixed():
    import seqio

    from t5x_rationale.data import registry

    for corpus in registry.SYNTHETIC_CORPORA:
        mixture = seqio.get_mixture_or_task(f"{corpus}_text_and_answers")
        assert sorted(t.name for t in mixture.tasks) == [f"{corpus}_answer_text", f"{corpus}_text"]


def test_write_corpus(tmp_path):
    sizes = {"train": 40, "validation": 10, "test": 10}
    paths = synthetic.write_corpus(tmp_path, sizes=sizes, seed=1)
    assert sorted(paths) == sorted(f"{s}.{ext}" for s in sizes for ext in ("jsonl", "txt"))
    for split, size in sizes.items():
        rows = synthetic.generate_split(split, num_examples=size, seed=1)
        with open(paths[f"{split}.jsonl"], encoding="utf-8") as f:
            lines = f.read().splitlines()
        assert lines == [json.dumps(row, sort_keys=True) for row in rows]
        with open(paths[f"{split}.txt"], encoding="utf-8") as f:
            assert f.read().splitlines() == [synthetic.plain_text(row) for row in rows]


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="split"):
        synthetic.generate_split("dev", num_examples=1)
    with pytest.raises(ValueError, match="difficulty"):
        synthetic.generate_split("train", num_examples=1, difficulty=7)
    with pytest.raises(ValueError, match="min_ops"):
        synthetic.Difficulty(min_ops=1)
