"""A task split's examples in file order, and scoring predictions with the task's metrics."""

from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np
import seqio

from t5x_rationale.data.quiet_stderr import is_tokenizer_notice, stderr_without


def load_examples(
    task_name: str, split: str, *, max_examples: Optional[int] = None, unique_ids: bool = True
) -> list[dict]:
    """A task split's examples in file order, as NumPy/bytes dicts (after preprocessing).

    With `unique_ids`, only the first row of each `id` is kept: a chain-of-thought task has
    one row per teacher rationale, but a question is answered (and scored) once.
    """
    task = seqio.get_mixture_or_task(task_name)
    ds = task.get_dataset(
        sequence_length=None,
        split=split,
        shuffle=False,
        num_epochs=1,
        use_cached=False,
        trim_output_features=False,
    )
    examples, seen = [], set()
    with stderr_without(is_tokenizer_notice):  # the split is read only as far as needed
        for ex in ds.as_numpy_iterator():
            key = ex.get("id")
            if unique_ids and key is not None:
                if key in seen:
                    continue
                seen.add(key)
            examples.append(ex)
            if max_examples is not None and len(examples) == max_examples:
                break
    return examples


def score_task(
    task: seqio.Task, examples: Sequence[dict], predictions: Sequence[str]
) -> dict[str, float]:
    """The task's metric_fns over postprocessed predictions and targets."""
    targets = [
        task.postprocess_fn(ex["targets_pretokenized"], example=ex, is_target=True)
        for ex in examples
    ]
    outputs = [
        task.postprocess_fn(p, example=ex, is_target=False) for p, ex in zip(predictions, examples)
    ]
    scores: dict[str, float] = {}
    for metric_fn in task.metric_fns:
        scores.update(metric_fn(targets, outputs))
    return scores


def text_of(value: Any) -> str:
    """bytes/str/NumPy scalar -> str."""
    if isinstance(value, (bytes, np.bytes_)):
        return value.decode("utf-8")
    return str(value)


def scored_tasks(name: str) -> list[seqio.Task]:
    """The tasks of a task or mixture `name` that have metrics to evaluate."""
    tasks = seqio.get_mixture_or_task(name)
    tasks = tasks.tasks if isinstance(tasks, seqio.Mixture) else [tasks]
    scored = [t for t in tasks if t.metric_fns]
    if not scored:
        raise ValueError(f"{name!r} has no task with metric_fns to evaluate")
    return scored
