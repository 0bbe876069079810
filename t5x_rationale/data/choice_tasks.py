"""Multiple-choice tasks (PINTO): question, choices and a rationale in, one choice out.

`register_choice_task(name, source)` registers `{name}_choices` over a source of
teacher-schema rows that have `choices` (rows without choices or without a rationale are
left out). Each example has

- `inputs`: `"{input} Choices: (a) c1 (b) c2 ... Rationale:"` (no EOS: the rationale follows),
- `rationale`: the row's first teacher rationale (no EOS; `ChoicesConverter` appends it and
  marks the rationale's tokens in `rationale_mask`),
- `choices`: the choices' texts, each with EOS (the decoder targets that are scored),
- `choice_label`: int32, the index of `label` in `choices`.

Importing this module registers the shipped corpora's multiple-choice variants
(`synthetic/choices.py`: the answer and three near misses) as `synthetic_arith_choices`,
`synthetic_arith_easy_choices` and `synthetic_arith_multistep_choices`.
"""

from __future__ import annotations

import functools
from typing import Optional

import seqio
import tensorflow as tf

from t5x_rationale.data import sources, synthetic
from t5x_rationale.data.registry import SYNTHETIC, SYNTHETIC_CORPORA
from t5x_rationale.data.synthetic.choices import DEFAULT_NUM_CHOICES, with_choices
from t5x_rationale.data.vocab import get_vocabulary

AUTOTUNE = tf.data.AUTOTUNE
CHOICES_SUFFIX = "_choices"
_LETTERS = tuple(f"({letter})" for letter in "abcdefghijklmnopqrstuvwxyz")


def _mc_example(ex):
    """A teacher-schema row -> the task's text features and the label's choice index."""
    choices = ex["choices"]
    letters = tf.constant(_LETTERS)[: tf.size(choices)]
    listed = tf.strings.reduce_join(tf.strings.join([letters, choices], " "), separator=" ")
    is_label = tf.cast(tf.equal(choices, ex["label"]), tf.int32)
    return {
        "id": ex["id"],
        "inputs": tf.strings.join([ex["input"], " Choices: ", listed, ". Rationale:"]),
        "rationale": ex["rationales"][0],
        "choices": choices,
        "choice_label": tf.cast(tf.argmax(is_label), tf.int32),
    }


def _mc_rows(ds):
    """Rows with choices, the label among them, and a rationale, as multiple-choice examples."""
    ds = ds.filter(
        lambda ex: tf.logical_and(
            tf.size(ex["rationales"]) > 0, tf.reduce_any(tf.equal(ex["choices"], ex["label"]))
        )
    )
    return ds.map(_mc_example, num_parallel_calls=AUTOTUNE)


def register_choice_task(
    name: str,
    source: seqio.DataSource,
    *,
    vocabulary: Optional[seqio.Vocabulary] = None,
    overwrite: bool = False,
) -> str:
    """Registers `{name}_choices` over a source of teacher-schema rows; returns its name."""
    vocabulary = vocabulary or get_vocabulary()
    task = name + CHOICES_SUFFIX
    if overwrite:
        seqio.TaskRegistry.remove(task)
    seqio.TaskRegistry.add(
        task,
        source=source,
        output_features={
            "inputs": seqio.Feature(vocabulary, add_eos=False),
            "rationale": seqio.Feature(vocabulary, add_eos=False),
            "choices": seqio.Feature(vocabulary, add_eos=True, rank=2),
        },
        preprocessors=[_mc_rows, seqio.preprocessors.tokenize, seqio.preprocessors.append_eos],
        metric_fns=[],
    )
    return task


def is_choice_task(name: str) -> bool:
    """Whether `name` is a registered multiple-choice task (it has a `choices` feature)."""
    if name not in seqio.TaskRegistry.names():
        return False
    return "choices" in seqio.TaskRegistry.get(name).output_features


@functools.lru_cache(maxsize=None)
def _choice_rows(split: str, num_examples: int, seed: int, difficulty) -> tuple[dict, ...]:
    rows = synthetic.generate_split(
        split, num_examples=num_examples, seed=seed, difficulty=difficulty
    )
    return tuple(with_choices(rows, seed=seed, split=split, num_choices=DEFAULT_NUM_CHOICES))


def synthetic_choice_source(
    *,
    sizes: Optional[dict] = None,
    seed: int = synthetic.DEFAULT_SEED,
    difficulty: synthetic.DifficultyLike = synthetic.DEFAULT_DIFFICULTY,
) -> seqio.DataSource:
    """The generated corpus with `choices` (the answer and three near misses) on every row."""
    sizes = dict(sizes or synthetic.DEFAULT_SIZES)
    corpus_seed = seed

    def dataset_fn(split: str, shuffle_files: bool, seed: Optional[int] = None) -> tf.data.Dataset:
        del shuffle_files, seed  # one in-memory "file"; seqio shuffles examples
        level = synthetic.as_difficulty(difficulty)
        return sources.rows_to_dataset(_choice_rows(split, sizes[split], corpus_seed, level))

    return seqio.FunctionDataSource(dataset_fn, splits=tuple(sizes), num_input_examples=sizes)


def register_synthetic_choices(
    name: str = SYNTHETIC,
    *,
    sizes: Optional[dict] = None,
    seed: int = synthetic.DEFAULT_SEED,
    difficulty: synthetic.DifficultyLike = synthetic.DEFAULT_DIFFICULTY,
    overwrite: bool = False,
) -> str:
    """Registers a generated corpus's multiple-choice variant as `{name}_choices`."""
    source = synthetic_choice_source(sizes=sizes, seed=seed, difficulty=difficulty)
    return register_choice_task(name, source, overwrite=overwrite)


if SYNTHETIC + CHOICES_SUFFIX not in seqio.TaskRegistry.names():
    for _corpus, _difficulty in SYNTHETIC_CORPORA.items():
        register_synthetic_choices(_corpus, difficulty=_difficulty)
