"""A frozen teacher for distillation objectives: restored, sharded like the student."""

from __future__ import annotations

import functools
from typing import Any, Callable, Optional

from t5x_rationale.architectures import build_model
from t5x_rationale.runtime.checkpoints import restore_params
from t5x_rationale.runtime.trainer import abstract_params


def attach_teacher(
    objective,
    teacher_config,
    teacher_checkpoint: Optional[str],
    partitioner,
    example_batch,
    load: Optional[Callable[[Any], Any]] = None,
):
    """(objective, constants): with a teacher, its restored sharded params and `teacher_model`
    bound to the objective; without one, the objective unchanged and no constants. `load`
    (abstract params -> params) replaces the checkpoint restore (an HF teacher)."""
    if teacher_config is None:
        if teacher_checkpoint is not None:
            raise ValueError("train.teacher_checkpoint is set but train.teacher_config is not")
        return objective, None
    if teacher_checkpoint is None:
        raise ValueError("train.teacher_config is set but train.teacher_checkpoint is not")
    teacher = build_model(teacher_config)
    abstract = abstract_params(teacher, partitioner, example_batch)
    params = load(abstract) if load else restore_params(teacher_checkpoint, abstract)[0]
    return functools.partial(objective, teacher_model=teacher), {"teacher": params}
