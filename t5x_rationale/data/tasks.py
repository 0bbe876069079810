"""seqio task registration for rationale datasets, in a few lines per dataset.

`register_rationale_tasks(name, source)` registers, for a source of teacher-rationale rows
(see `teacher_jsonl.py` for the row schema):

| name                      | inputs                     | targets                         |
|---------------------------|----------------------------|---------------------------------|
| `{name}_label`            | `"predict: " + input`      | `label`                         |
| `{name}_rationale`        | `"explain: " + input`      | a teacher rationale             |
| `{name}_step_by_step`     | mixture of the two above (distilling step-by-step)           |
| `{name}_cot`              | `input`                    | `rationale + " --> " + label`   |
| `{name}_cot_decoder`      | `input + " ###"`           | `rationale + " --> " + label`   |
| `{name}_contrastive`      | `input`                    | `positives` / `negatives`, label |
| `{name}_counterfactual`   | SCOTT's factual and counterfactual rows (`counterfactual.py`) |
| `{name}_factual`          | `"[factual] " + input`     | `"[factual] " + r + ... + label` |

`{name}_counterfactual_decoder` and `{name}_factual_decoder` are the same with `input + " ###"`
prompts. Label and rationale rows carry `task_id` 1 and 2 (`TASK_IDS`) for per-task losses. The
chain-of-thought tasks make one row per teacher rationale (diverse reasoning). Answers are
scored with `metrics.answer_accuracy` after `metrics.answer_postprocessor`.
`register_text_task` registers plain-text LM tasks (`targets` only).
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import seqio
import tensorflow as tf

from t5x_rationale.data import counterfactual, metrics
from t5x_rationale.data.vocab import get_vocabulary

AUTOTUNE = tf.data.AUTOTUNE
TASK_IDS = {"label": 1, "rationale": 2}


@dataclasses.dataclass(frozen=True)
class RationaleTaskNames:
    """The names `register_rationale_tasks` registered for one dataset."""

    label: str
    rationale: str
    step_by_step: str
    cot: str
    cot_decoder: str
    contrastive: str
    factual: str
    counterfactual: str
    factual_decoder: str
    counterfactual_decoder: str


@dataclasses.dataclass(frozen=True)
class Formats:
    """The text templates of the rationale tasks (docs/methods.md)."""

    predict_prefix: str = "predict: "
    explain_prefix: str = "explain: "
    cot_separator: str = " --> "
    decoder_prompt_suffix: str = " ###"


def add_task_id(ds: tf.data.Dataset, task_id: int) -> tf.data.Dataset:
    """Adds the scalar `task_id` feature the multi-task converters need."""
    return ds.map(
        lambda ex: {**ex, "task_id": tf.constant(task_id, tf.int32)}, num_parallel_calls=AUTOTUNE
    )


def _label_rows(ds, prefix: str):
    return ds.map(
        lambda ex: {"id": ex["id"], "inputs": prefix + ex["input"], "targets": ex["label"]},
        num_parallel_calls=AUTOTUNE,
    )


def _one_row_per_rationale(ds, build_inputs, build_targets, all_rationales: bool):
    """One row per rationale (diverse reasoning) or only the first one; rows without one dropped."""

    def rows(ex):
        rationales = ex["rationales"] if all_rationales else ex["rationales"][:1]
        n = tf.shape(rationales)[0]
        return tf.data.Dataset.from_tensor_slices(
            {
                "id": tf.fill([n], ex["id"]),
                "inputs": tf.fill([n], build_inputs(ex)),
                "targets": build_targets(ex, rationales),
            }
        )

    return ds.flat_map(rows)


def _contrastive_rows(ds):
    """Question, positives, negatives and the label (self-adversarial samples are checked
    against it; `self_consistency.py` filters the positives on the host)."""
    return ds.map(
        lambda ex: {
            "id": ex["id"],
            "inputs": ex["input"],
            "positives": ex["rationales"],
            "negatives": ex["negatives"],
            "targets": ex["label"],
        },
        num_parallel_calls=AUTOTUNE,
    )


def _features(vocabulary, names: tuple[str, ...], rank: int = 1) -> dict[str, seqio.Feature]:
    return {n: seqio.Feature(vocabulary, add_eos=True, rank=rank) for n in names}


def _register(
    name: str, source, preprocessor, output_features, postprocess_fn, metric_fns, overwrite
):
    if overwrite:
        seqio.TaskRegistry.remove(name)
    return seqio.TaskRegistry.add(
        name,
        source=source,
        output_features=output_features,
        preprocessors=[preprocessor, seqio.preprocessors.tokenize, seqio.preprocessors.append_eos],
        postprocess_fn=postprocess_fn,
        metric_fns=metric_fns,
    )


_TASK_KINDS = ("label", "rationale", "step_by_step", "cot", "cot_decoder", "contrastive")
_TASK_KINDS += ("factual", "counterfactual", "factual_decoder", "counterfactual_decoder")


def _label_preprocessor(formats: Formats):
    """`predict: input` -> label rows with the label `task_id`."""

    def preprocess(ds):
        return add_task_id(_label_rows(ds, formats.predict_prefix), TASK_IDS["label"])

    return preprocess


def _rationale_preprocessor(formats: Formats):
    """`explain: input` -> first-rationale rows with the rationale `task_id`."""

    def preprocess(ds):
        rows = _one_row_per_rationale(
            ds,
            lambda ex: formats.explain_prefix + ex["input"],
            lambda ex, r: r,
            all_rationales=False,
        )
        return add_task_id(rows, TASK_IDS["rationale"])

    return preprocess


def _cot_preprocessor(prompt, formats: Formats, all_rationales: bool):
    """`prompt(ex)` -> `rationale --> label` rows."""

    def cot_targets(ex, rationales):
        return rationales + formats.cot_separator + ex["label"]

    def preprocess(ds):
        return _one_row_per_rationale(ds, prompt, cot_targets, all_rationales)

    return preprocess


def _register_cot_tasks(
    names: RationaleTaskNames, source, text, formats: Formats, all_rationales: bool, overwrite
) -> None:
    """The chain-of-thought tasks: `input` (encoder-decoder) or `input ###` (decoder) prompts."""
    for task_name, prompt in (
        (names.cot, lambda ex: ex["input"]),
        (names.cot_decoder, lambda ex: ex["input"] + formats.decoder_prompt_suffix),
    ):
        _register(
            task_name,
            source,
            _cot_preprocessor(prompt, formats, all_rationales),
            text,
            metrics.answer_postprocessor,
            [metrics.answer_accuracy],
            overwrite,
        )


def _register_counterfactual_tasks(
    names: RationaleTaskNames, source, text, vocabulary, formats: Formats, overwrite
) -> None:
    """SCOTT's factual + counterfactual training rows and the factual rows alone (evaluated by
    the parsed answer), for encoder-decoder and decoder-only (`input ###`) students."""
    for train_name, eval_name, suffix in (
        (names.counterfactual, names.factual, ""),
        (names.counterfactual_decoder, names.factual_decoder, formats.decoder_prompt_suffix),
    ):
        for task_name, negatives in ((train_name, 1), (eval_name, 0)):
            rows = counterfactual.preprocessor(
                vocabulary, prompt_suffix=suffix, max_negatives=negatives
            )
            metric_fns = [metrics.answer_accuracy] if task_name == eval_name else []
            postprocess = metrics.answer_postprocessor
            _register(task_name, source, rows, text, postprocess, metric_fns, overwrite)


def register_rationale_tasks(
    name: str,
    source: seqio.DataSource,
    *,
    vocabulary: Optional[seqio.Vocabulary] = None,
    formats: Formats = Formats(),
    all_rationales_for_cot: bool = True,
    label_rate: float = 1.0,
    rationale_rate: float = 1.0,
    overwrite: bool = False,
) -> RationaleTaskNames:
    """Registers the label, rationale, step-by-step, CoT, contrastive and counterfactual tasks
    of one dataset.

    Args:
      name: prefix of every registered name.
      source: a seqio source of teacher-rationale rows (`sources.rationale_source`).
      vocabulary: defaults to the shipped SentencePiece model.
      formats: text templates.
      all_rationales_for_cot: one CoT row per teacher rationale (else only the first).
      label_rate, rationale_rate: step-by-step mixture rates.
      overwrite: replace tasks already registered under these names.
    """
    vocabulary = vocabulary or get_vocabulary()
    names = RationaleTaskNames(*(f"{name}_{kind}" for kind in _TASK_KINDS))
    text = _features(vocabulary, ("inputs", "targets"))
    _register(
        names.label,
        source,
        _label_preprocessor(formats),
        text,
        metrics.answer_postprocessor,
        [metrics.answer_accuracy, metrics.exact_match],
        overwrite,
    )
    rationale_fn = _rationale_preprocessor(formats)
    _register(names.rationale, source, rationale_fn, text, None, [metrics.exact_match], overwrite)
    if overwrite:
        seqio.MixtureRegistry.remove(names.step_by_step)
    seqio.MixtureRegistry.add(
        names.step_by_step, [(names.label, label_rate), (names.rationale, rationale_rate)]
    )
    _register_cot_tasks(names, source, text, formats, all_rationales_for_cot, overwrite)
    contrastive = {
        **_features(vocabulary, ("inputs", "targets")),
        **_features(vocabulary, ("positives", "negatives"), rank=2),
    }
    _register(names.contrastive, source, _contrastive_rows, contrastive, None, [], overwrite)
    _register_counterfactual_tasks(names, source, text, vocabulary, formats, overwrite)
    return names


def register_text_task(
    name: str,
    source: seqio.DataSource,
    *,
    vocabulary: Optional[seqio.Vocabulary] = None,
    overwrite: bool = False,
) -> str:
    """A plain LM task over a source of `{"text": ...}` rows (e.g. `sources.text_line_source`)."""
    vocabulary = vocabulary or get_vocabulary()
    to_targets = lambda ds: ds.map(lambda ex: {"targets": ex["text"]}, num_parallel_calls=AUTOTUNE)  # noqa: E731
    _register(name, source, to_targets, _features(vocabulary, ("targets",)), None, [], overwrite)
    return name
