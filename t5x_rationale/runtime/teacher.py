"""A frozen teacher for distillation objectives: restored, sharded like the student."""

from __future__ import annotations

import functools
from typing import Optional

from t5x_rationale.architectures import build_model
from t5x_rationale.runtime.checkpoints import restore_params
from t5x_rationale.runtime.trainer import abstract_params


def attach_teacher(
    objective, teacher_config, teacher_checkpoint: Optional[str], partitioner, example_batch
):
    """(objective, constants): with a teacher, its restored sharded params and `teacher_model`
    bound to the objective; without one, the objective unchanged and no constants."""
    if teacher_config is None:
        if teacher_checkpoint is not None:
            raise ValueError("train.teacher_checkpoint is set but train.teacher_config is not")
        return objective, None
    if teacher_checkpoint is None:
        raise ValueError("train.teacher_config is set but train.teacher_checkpoint is not")
    teacher = build_model(teacher_config)
    abstract = abstract_params(teacher, partitioner, example_batch)
    params, _ = restore_params(teacher_checkpoint, abstract)
    return functools.partial(objective, teacher_model=teacher), {"teacher": params}
