"""Checks and defaults shared by the train, evaluate and infer entry points."""

from __future__ import annotations

import difflib
import functools
import inspect
import os
from typing import Optional

import gin
import seqio

import t5x_rationale.data.registry  # noqa: F401  (registers the shipped corpus)
from t5x_rationale.architectures import T5Config, build_model
from t5x_rationale.data.converters import DecoderConverter, EncDecConverter
from t5x_rationale.data.vocab import get_vocabulary
from t5x_rationale.objectives.quiet_star import quiet_star_loss
from t5x_rationale.runtime.checkpoints import restore_params
from t5x_rationale.runtime.trainer import abstract_params


def load_vocabulary(path: Optional[str], model_config) -> seqio.SentencePieceVocabulary:
    """The SentencePiece vocabulary, checked to fit the model's embedding table."""
    vocabulary = get_vocabulary(path)
    if vocabulary.vocab_size > model_config.vocab_size:
        raise ValueError(
            f"the tokenizer {vocabulary.sentencepiece_model_file} has {vocabulary.vocab_size} "
            f"pieces but the model's vocab_size is {model_config.vocab_size}; set "
            f"model_config.vocab_size >= {vocabulary.vocab_size}"
        )
    return vocabulary


def check_task(name: str, vocabulary: seqio.Vocabulary) -> seqio.Task | seqio.Mixture:
    """The registered task or mixture `name`; a clear error if unknown or tokenized differently."""
    registered = list(seqio.TaskRegistry.names()) + list(seqio.MixtureRegistry.names())
    if name not in registered:
        close = difflib.get_close_matches(name, registered, n=5)
        raise ValueError(
            f"no seqio task or mixture named {name!r}"
            + (f"; did you mean {close}?" if close else "")
            + " (register it in a module imported by your gin file: `import my_tasks`)"
        )
    task = seqio.get_mixture_or_task(name)
    for feature_name, feature in task.output_features.items():
        vocab = feature.vocabulary
        if isinstance(vocab, seqio.SentencePieceVocabulary) and isinstance(
            vocabulary, seqio.SentencePieceVocabulary
        ):
            if os.path.abspath(vocab.sentencepiece_model_file) != os.path.abspath(
                vocabulary.sentencepiece_model_file
            ):
                raise ValueError(
                    f"task {name!r} feature {feature_name!r} is tokenized with "
                    f"{vocab.sentencepiece_model_file}, but this run uses "
                    f"{vocabulary.sentencepiece_model_file}"
                )
    return task


def attach_teacher(
    objective, teacher_config, teacher_checkpoint: Optional[str], partitioner, example_batch
):
    """(objective, constants): with a teacher, its restored sharded params and `teacher_model` bound."""
    if teacher_config is None:
        if teacher_checkpoint is not None:
            raise ValueError("train.teacher_checkpoint is set but train.teacher_config is not")
        return objective, None
    if teacher_checkpoint is None:
        raise ValueError("train.teacher_config is set but train.teacher_checkpoint is not")
    teacher = build_model(teacher_config)
    params, _ = restore_params(
        teacher_checkpoint, abstract_params(teacher, partitioner, example_batch)
    )
    return functools.partial(objective, teacher_model=teacher), {"teacher": params}


def default_converter(model_config) -> seqio.FeatureConverter:
    """Packed encoder-decoder or decoder-only (loss on targets) converter for the architecture."""
    return (
        EncDecConverter(pack=True)
        if isinstance(model_config, T5Config)
        else DecoderConverter(pack=True)
    )


def model_info(trainer, example_batch: dict, model_config) -> str:
    """`model-info.txt`: the config, then every param with shape, logical axes and mesh sharding."""
    abstract, specs, shardings, notes = trainer.layout(example_batch)
    table = trainer.partitioner.describe(abstract.params, shardings.params, specs.params)
    lines = [f"model: {model_config}", f"mesh: {dict(trainer.partitioner.mesh.shape)}", "", table]
    if notes:
        lines += ["", "replicated because the mesh axes do not divide the dimension:", *notes]
    return "\n".join(lines) + "\n"


def thinking_settings(objective) -> dict:
    """num_ahead, num_talk, num_thoughts of a Quiet-STaR objective, for its FLOPs count.

    Values come from `functools.partial` keywords, else from gin bindings of
    `quiet_star_loss`, else from its defaults.
    """
    names = ("num_ahead", "num_talk", "num_thoughts")
    params = inspect.signature(quiet_star_loss).parameters
    out = {k: params[k].default for k in names}
    out.update({k: v for k, v in gin.get_bindings("quiet_star_loss").items() if k in names})
    if isinstance(objective, functools.partial):
        out.update({k: v for k, v in objective.keywords.items() if k in names})
    return out
