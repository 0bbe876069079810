"""The registered datasets: the shipped synthetic corpus under stable names, GSM8K and JSONL.

Importing this module registers the shipped corpus (default seed and sizes) as

- `synthetic_arith_{label,rationale,step_by_step,cot,cot_decoder,contrastive}` and SCOTT's
  `synthetic_arith_{counterfactual,factual}` (and `_decoder` forms; see `tasks.py`),
- `synthetic_arith_text`: the plain-text view (question + rationale + answer) for LM training,
  `synthetic_arith_answer_text` the direct-answer view (question + answer) and
  `synthetic_arith_text_and_answers` the two mixed 1:1 (the thinking study's text),
- the same under `synthetic_arith_easy_*` at difficulty level 1 (two operations, small
  numbers; the quickstart's corpus) and `synthetic_arith_multistep_*` (three or four
  operations on numbers up to 12; the distillation comparison's corpus).

Splits: train / validation / test, disjoint by question. `register_gsm8k(data_dir)` and
`register_jsonl(name, ...)` register a user's copy of GSM8K or their own teacher-rationale
JSONL files the same way (both are gin-configurable for launches).
"""

from __future__ import annotations

import functools
import os
from typing import Optional

import seqio
import tensorflow as tf

from t5x_rationale.data import sources, synthetic
from t5x_rationale.data.tasks import (
    RationaleTaskNames,
    register_rationale_tasks,
    register_text_task,
)
from t5x_rationale.data.vocab import get_vocabulary

SYNTHETIC = "synthetic_arith"
SYNTHETIC_EASY = "synthetic_arith_easy"  # difficulty level 1: two operations, numbers up to 12
# Three or four operations on numbers up to 12: composing the steps is the hard part, not the
# arithmetic (the distillation comparison's corpus).
SYNTHETIC_MULTISTEP = "synthetic_arith_multistep"
MULTISTEP_DIFFICULTY = synthetic.Difficulty(min_ops=3, max_ops=4, max_value=12)
SPLITS = ("train", "validation", "test")


@functools.lru_cache(maxsize=None)
def _synthetic_rows(split: str, num_examples: int, seed: int, difficulty) -> tuple[dict, ...]:
    return tuple(
        synthetic.generate_split(split, num_examples=num_examples, seed=seed, difficulty=difficulty)
    )


TEXT_VIEWS = {"rationale": synthetic.plain_text, "answer": synthetic.answer_text}


def _text_dataset(rows, view: str) -> tf.data.Dataset:
    texts = [TEXT_VIEWS[view](row) for row in rows]
    return tf.data.Dataset.from_tensor_slices({"text": tf.constant(texts, tf.string)})


def synthetic_source(
    *,
    sizes: Optional[dict] = None,
    seed: int = synthetic.DEFAULT_SEED,
    difficulty: synthetic.DifficultyLike = synthetic.DEFAULT_DIFFICULTY,
    text: Optional[str] = None,
) -> seqio.DataSource:
    """The generated corpus as a seqio source: rationale rows, or `{"text"}` rows in the
    `text` view (`TEXT_VIEWS`: "rationale" or "answer")."""
    if text is not None and text not in TEXT_VIEWS:
        raise ValueError(f"synthetic_source text view {text!r} not in {sorted(TEXT_VIEWS)}")
    sizes = dict(sizes or synthetic.DEFAULT_SIZES)

    corpus_seed = seed

    def dataset_fn(split: str, shuffle_files: bool, seed: Optional[int] = None) -> tf.data.Dataset:
        del shuffle_files, seed  # one in-memory "file"; seqio shuffles examples
        rows = _synthetic_rows(
            split, sizes[split], corpus_seed, synthetic.as_difficulty(difficulty)
        )
        return _text_dataset(rows, text) if text else sources.rows_to_dataset(rows)

    return seqio.FunctionDataSource(dataset_fn, splits=tuple(sizes), num_input_examples=sizes)


def register_synthetic(
    name: str = SYNTHETIC,
    *,
    sizes: Optional[dict] = None,
    seed: int = synthetic.DEFAULT_SEED,
    difficulty: synthetic.DifficultyLike = synthetic.DEFAULT_DIFFICULTY,
    overwrite: bool = False,
) -> RationaleTaskNames:
    """Registers a generated corpus: its rationale tasks, the text views `{name}_text`
    (rationale) and `{name}_answer_text` (direct answer), and their 1:1 mixture
    `{name}_text_and_answers`."""
    kwargs = dict(sizes=sizes, seed=seed, difficulty=difficulty)
    names = register_rationale_tasks(name, synthetic_source(**kwargs), overwrite=overwrite)
    texts = (f"{name}_text", f"{name}_answer_text")
    for task, view in zip(texts, TEXT_VIEWS):
        register_text_task(task, synthetic_source(**kwargs, text=view), overwrite=overwrite)
    if overwrite and f"{name}_text_and_answers" in seqio.MixtureRegistry.names():
        seqio.MixtureRegistry.remove(f"{name}_text_and_answers")
    seqio.MixtureRegistry.add(f"{name}_text_and_answers", list(texts), default_rate=1.0)
    return names


def _vocabulary(path: Optional[str]) -> Optional[seqio.Vocabulary]:
    return get_vocabulary(path) if path is not None else None


def register_gsm8k(
    data_dir: str,
    name: str = "gsm8k",
    *,
    keep_annotations: bool = False,
    overwrite: bool = True,
    vocabulary_path: Optional[str] = None,
) -> RationaleTaskNames:
    """Registers a local GSM8K copy (`train.jsonl`, `test.jsonl`) as `{name}_*` tasks,
    tokenized by `vocabulary_path` (a SentencePiece model or a HF directory; default: the
    shipped model)."""
    splits = {s: os.path.join(data_dir, f"{s}.jsonl") for s in ("train", "test")}
    for path in splits.values():
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"GSM8K split file {path} does not exist (expected train.jsonl and "
                f"test.jsonl in {data_dir})"
            )
    source = sources.rationale_source(splits, reader="gsm8k", keep_annotations=keep_annotations)
    vocabulary = _vocabulary(vocabulary_path)
    return register_rationale_tasks(name, source, vocabulary=vocabulary, overwrite=overwrite)


def gsm8k_task_name(
    kind: str, *, data_dir: str, name: str = "gsm8k", vocabulary_path: Optional[str] = None
) -> str:
    """Registers the GSM8K copy in `data_dir` and names its `kind` task.

    For launch configs (`train.mixture_or_task_name = @gsm8k_task_name()` in gin): the
    registration happens when the entry point is called, so a run file needs no import of a
    user module. `kind` is a field of `RationaleTaskNames` (`label`, `step_by_step`, `cot`, ...).
    """
    if kind not in RationaleTaskNames.__dataclass_fields__:
        raise ValueError(
            f"unknown GSM8K task kind {kind!r}; expected one of "
            f"{sorted(RationaleTaskNames.__dataclass_fields__)}"
        )
    return getattr(register_gsm8k(data_dir, name, vocabulary_path=vocabulary_path), kind)


def register_jsonl(
    name: str,
    *,
    train: str,
    validation: Optional[str] = None,
    test: Optional[str] = None,
    skip_invalid: bool = False,
    overwrite: bool = True,
    vocabulary_path: Optional[str] = None,
) -> RationaleTaskNames:
    """Registers teacher-rationale JSONL files (paths or globs) as `{name}_*` tasks, tokenized
    by `vocabulary_path` (as in `register_gsm8k`)."""
    splits = {s: p for s, p in (("train", train), ("validation", validation), ("test", test)) if p}
    source = sources.rationale_source(splits, reader="jsonl", skip_invalid=skip_invalid)
    vocabulary = _vocabulary(vocabulary_path)
    return register_rationale_tasks(name, source, vocabulary=vocabulary, overwrite=overwrite)


# The shipped corpora by name, with their difficulty.
SYNTHETIC_CORPORA = {
    SYNTHETIC: synthetic.DEFAULT_DIFFICULTY,
    SYNTHETIC_EASY: synthetic.as_difficulty(1),
    SYNTHETIC_MULTISTEP: MULTISTEP_DIFFICULTY,
}

if SYNTHETIC + "_label" not in seqio.TaskRegistry.names():
    for corpus, corpus_difficulty in SYNTHETIC_CORPORA.items():
        register_synthetic(corpus, difficulty=corpus_difficulty)
