"""What a run reads, checked before anything is written: vocabulary, task and converter."""

from __future__ import annotations

import difflib
import logging
import os
import sys
from typing import Optional

import seqio

import t5x_rationale.data.choice_tasks  # noqa: F401  (and its multiple-choice variants)
import t5x_rationale.data.registry  # noqa: F401  (registers the shipped corpus)
from t5x_rationale.data.converters import DecoderConverter, EncDecConverter
from t5x_rationale.data.hf_vocab import HFTokenizerVocabulary
from t5x_rationale.data.vocab import get_vocabulary

log = logging.getLogger(__name__)


def load_vocabulary(path: Optional[str], model_config) -> seqio.Vocabulary:
    """The vocabulary (a SentencePiece model or a HF directory), checked to fit the model's
    embedding table."""
    vocabulary = get_vocabulary(path)
    if vocabulary.vocab_size > model_config.vocab_size:
        raise ValueError(
            f"the tokenizer {_source(vocabulary)} has {vocabulary.vocab_size} "
            f"pieces but the model's vocab_size is {model_config.vocab_size}; set "
            f"model_config.vocab_size >= {vocabulary.vocab_size}"
        )
    if model_config.architecture == "encoder_decoder":
        _warn_if_id_zero_is_text(vocabulary)
    return vocabulary


def _warn_if_id_zero_is_text(vocabulary: seqio.Vocabulary) -> None:
    """Where id 0 is a text token (byte-level BPE: "!" in Llama 3 and Qwen2), an
    encoder-decoder's unpacked encoder inputs still take it for padding (the encoder masks
    id 0 where no segment ids are given): said once. Everything else tells it from padding."""
    if isinstance(vocabulary, HFTokenizerVocabulary):
        special = vocabulary.tokenizer.get_added_tokens_decoder().get(0)
        text = (
            None if special is not None and special.special else vocabulary.tokenizer.id_to_token(0)
        )
    else:
        model = vocabulary.tokenizer
        text = None if model.is_control(0) or model.is_unknown(0) else model.id_to_piece(0)
    if text is not None and _source(vocabulary) not in _WARNED:
        _WARNED.add(_source(vocabulary))
        message = (
            f"warning: id 0 of {_source(vocabulary)} is the text token {text!r}, but an "
            "encoder-decoder's unpacked encoder inputs take id 0 for padding (not modelled "
            "yet): pack the inputs or use a decoder-only model"
        )
        log.warning(message)
        print(message, file=sys.stderr)


_WARNED: set = set()


def check_decode_eos(eos_id: Optional[int], vocabulary: seqio.Vocabulary) -> None:
    """Decoding must stop at the vocabulary's eos (DecodeConfig.eos_id defaults to 1, the
    shipped tokenizer's and T5's; Llama-style tokenizers use 2 or another id). None: the
    decoding never stops early, which is allowed."""
    if eos_id is not None and eos_id != vocabulary.eos_id:
        raise ValueError(
            f"DecodeConfig.eos_id = {eos_id}, but the tokenizer {_source(vocabulary)} ends "
            f"text with id {vocabulary.eos_id}: set DecodeConfig.eos_id = {vocabulary.eos_id}"
        )


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
        _check_same_tokenizer(name, feature_name, feature.vocabulary, vocabulary)
    return task


def _source(vocabulary: seqio.Vocabulary) -> str:
    """The file a vocabulary reads (its description if it reads none)."""
    if isinstance(vocabulary, seqio.SentencePieceVocabulary):
        return vocabulary.sentencepiece_model_file
    return getattr(vocabulary, "tokenizer_file", str(vocabulary))


def _check_same_tokenizer(task: str, feature: str, used: seqio.Vocabulary, run: seqio.Vocabulary):
    sentencepiece = seqio.SentencePieceVocabulary
    if isinstance(used, HFTokenizerVocabulary) or isinstance(run, HFTokenizerVocabulary):
        if used != run:
            raise ValueError(
                f"task {task!r} feature {feature!r} is tokenized with {_source(used)}, but this "
                f"run uses {_source(run)} (register the task with the run's vocabulary)"
            )
        return
    if not (isinstance(used, sentencepiece) and isinstance(run, sentencepiece)):
        return
    used_file, run_file = used.sentencepiece_model_file, run.sentencepiece_model_file
    if os.path.abspath(used_file) != os.path.abspath(run_file):
        raise ValueError(
            f"task {task!r} feature {feature!r} is tokenized with {used_file}, but this run "
            f"uses {run_file}"
        )


def default_converter(architecture: str) -> seqio.FeatureConverter:
    """Packed encoder-decoder, or decoder-only with the loss on targets, for `architecture`
    (a model config's `architecture`)."""
    if architecture == "encoder_decoder":
        return EncDecConverter(pack=True)
    return DecoderConverter(pack=True)
