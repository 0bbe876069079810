"""What teacher annotation reads: the questions and an optional few-shot prompt file.

Questions come from a JSONL file (`{"id"?, "input", "label"?}` a line; the id defaults to the
line number) or a task split (its `inputs_pretokenized`, with the answer its target states as
the label). The few-shot file is prepended to every question: a JSONL file of worked examples
(`{"input", "rationale", "label"}` or `{"input", "target"}` a line), each written as
`input + suffix + " " + rationale --> label` and separated by blank lines, or any other file,
used verbatim. Errors name the file and line.
"""

from __future__ import annotations

import os
from typing import Optional

from t5x_rationale.data.examples import load_examples, text_of
from t5x_rationale.data.metrics import extract_answer
from t5x_rationale.data.reading import json_objects

FEW_SHOT_SEPARATOR = "\n\n"


def _string(row: dict, key: str, where: str, *, required: bool = True) -> Optional[str]:
    value = row.get(key)
    if value is None and not required:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "input":
        return str(value)
    if not isinstance(value, str) or (required and not value.strip()):
        raise ValueError(f"{where}: field {key!r}: expected a non-empty string, got {value!r}")
    return value


def read_questions(path: str) -> list[dict]:
    """`{"id", "input", "label"}` questions of a JSONL file (label None when absent)."""
    questions, seen = [], {}
    for line_no, row in json_objects(path, "questions file"):
        where = f"{path}:{line_no}"
        key = _string(row, "id", where, required=False) or str(line_no)
        if key in seen:
            raise ValueError(f"{where}: id {key!r} repeats line {seen[key]}")
        seen[key] = line_no
        questions.append(
            {
                "id": key,
                "input": _string(row, "input", where),
                "label": _string(row, "label", where, required=False),
            }
        )
    if not questions:
        raise ValueError(f"questions file {path} has no questions")
    return questions


def task_questions(task_name: str, split: str, max_questions: Optional[int] = None) -> list[dict]:
    """A task split's questions: its input text, and the answer its target states."""
    examples = load_examples(task_name, split, max_examples=max_questions)
    if not examples:
        raise ValueError(f"task {task_name!r} split {split!r} has no examples")
    return [
        {
            "id": text_of(ex.get("id", i)),
            "input": text_of(ex["inputs_pretokenized"]),
            "label": extract_answer(text_of(ex["targets_pretokenized"])),
        }
        for i, ex in enumerate(examples)
    ]


def read_few_shot(path: str, prompt_suffix: str = "") -> str:
    """The few-shot prefix of a file (ends with the separator before the question)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"few-shot file {path} does not exist")
    if not path.endswith(".jsonl"):
        with open(path, encoding="utf-8") as f:
            text = f.read()
        if not text.strip():
            raise ValueError(f"few-shot file {path} is empty")
        return text.rstrip("\n") + FEW_SHOT_SEPARATOR
    shots = []
    for line_no, row in json_objects(path, "few-shot file"):
        where = f"{path}:{line_no}"
        question = _string(row, "input", where)
        if "target" in row:
            target = _string(row, "target", where)
        elif "rationale" in row and "label" in row:
            target = f"{_string(row, 'rationale', where)} --> {_string(row, 'label', where)}"
        else:
            raise ValueError(f"{where}: needs 'target', or 'rationale' and 'label'")
        shots.append(f"{question}{prompt_suffix} {target}")
    if not shots:
        raise ValueError(f"few-shot file {path} has no examples")
    return FEW_SHOT_SEPARATOR.join(shots) + FEW_SHOT_SEPARATOR
