"""What the STaR loop reads and writes as rows: its training questions (id, input, label),
the seed set of teacher rationales, and each iteration's fine-tuning file."""

from __future__ import annotations

import json
import os
from typing import Iterable, Optional, Sequence

from t5x_rationale.data import synthetic
from t5x_rationale.data.registry import SYNTHETIC_CORPORA
from t5x_rationale.data.teacher_jsonl import read_rationale_jsonl
from t5x_rationale.runtime.run_files import write_text_atomic
from t5x_rationale.self_training.hints import with_hint


def write_jsonl(path: str, rows: Iterable[dict]) -> None:
    """One JSON object a line, written whole or not at all."""
    text = "".join(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n" for row in rows)
    write_text_atomic(path, text)


def read_jsonl(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def read_questions(path: str) -> list[dict]:
    """The training questions of a teacher-JSONL file (rationales optional and unused)."""
    rows = read_rationale_jsonl(path, require_rationales=False).rows
    if not rows:
        raise ValueError(f"{path}: no questions to self-train on")
    return [{"id": r["id"], "input": r["input"], "label": r["label"]} for r in rows]


def read_seed(path: Optional[str]) -> list[dict]:
    """The seed set's teacher rows (trained on in every iteration); [] without one."""
    if path is None:
        return []
    return [
        {"id": r["id"], "input": r["input"], "label": r["label"], "rationales": r["rationales"]}
        for r in read_rationale_jsonl(path).rows
    ]


def corpus_rows(corpus: str, count: int) -> list[dict]:
    """The first `count` train rows of a shipped synthetic corpus (its registered split)."""
    if corpus not in SYNTHETIC_CORPORA:
        raise ValueError(f"unknown corpus {corpus!r}; expected one of {sorted(SYNTHETIC_CORPORA)}")
    difficulty = SYNTHETIC_CORPORA[corpus]
    return synthetic.generate_split("train", num_examples=count, difficulty=difficulty)


def write_corpus_split(out_dir: str, corpus: str, num_seed: int, num_questions: int) -> dict:
    """Writes `seed.jsonl` (the first `num_seed` train questions with one teacher rationale
    each), `questions.jsonl` (the next `num_questions`, labels only) and `all_rationales.jsonl`
    (all of them, one teacher rationale each; its label task is the label-only student's)."""
    rows = corpus_rows(corpus, num_seed + num_questions)
    teacher = [{**_question(r), "rationales": r["rationales"][:1]} for r in rows]
    files = {
        "seed": (teacher[:num_seed]),
        "questions": [{**_question(r), "rationales": []} for r in rows[num_seed:]],
        "all_rationales": teacher,
    }
    os.makedirs(out_dir, exist_ok=True)
    paths = {}
    for name, part in files.items():
        paths[name] = os.path.join(out_dir, f"{name}.jsonl")
        write_jsonl(paths[name], part)
    return paths


def _question(row: dict) -> dict:
    return {"id": row["id"], "input": row["input"], "label": row["label"]}


def hinted_rows(rows: Sequence[dict]) -> list[dict]:
    """Teacher rows whose input carries the hint (the seed set's demonstrations of how a
    hint is used, STaR's rationalization prompt); ids get a `#hint` suffix."""
    return [
        {**r, "id": f"{r['id']}#hint", "input": with_hint(r["input"], r["label"])} for r in rows
    ]


def training_rows(seed: Sequence[dict], kept: Sequence[dict], hinted_seed: bool) -> list[dict]:
    """An iteration's fine-tuning rows: the seed set (and its hinted copies) and the kept
    rationales; a question in both gets all its distinct rationales."""
    merged: dict[str, dict] = {}
    for row in [*seed, *(hinted_rows(seed) if hinted_seed else []), *kept]:
        if row["id"] in merged:
            known = merged[row["id"]]["rationales"]
            known.extend(r for r in row["rationales"] if r not in known)
        else:
            merged[row["id"]] = {**row, "rationales": list(row["rationales"])}
    return list(merged.values())
