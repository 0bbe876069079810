"""Evaluation entry point: decode a task split from a checkpoint and compute its metrics.

    python -m t5x_rationale.evaluate --gin_file=runs/quickstart_eval.gin

Prints one line per task (`task split step: metric=value ...`) and writes the metrics to
`{output_dir}/{task}-{split}-step{N}.json` together with the predictions as JSONL. Beside
accuracy it reports counterfactual consistency (`data/faithfulness.py`): the answers decoded
after a forced wrong rationale, written to `...-counterfactual-predictions.jsonl`.

A multiple-choice task (`{name}_choices`, PINTO) is scored instead of decoded:
`choice_accuracy` is the percentage of questions whose highest-scoring choice (PINTO's own
length-normalised log-likelihood, `objectives.pinto.choice_predictions`) is the label.
Counterfactual consistency is not measured there (`CHOICE_FAITHFULNESS_NOTE`).
"""

from __future__ import annotations

import json
import os
from typing import Iterator, Mapping, Optional

import gin
import jax

from t5x_rationale.data import faithfulness as faith
from t5x_rationale.data.choice_tasks import is_choice_task
from t5x_rationale.data.examples import load_examples, score_task, scored_tasks, text_of
from t5x_rationale.data.pipeline import StreamSpec, TaskStream
from t5x_rationale.data.run_inputs import check_decode_eos, check_task, load_vocabulary
from t5x_rationale.gin_launch import main as gin_main
from t5x_rationale.inference.choice_scoring import ChoiceScorer
from t5x_rationale.inference.decoding import DecodeConfig
from t5x_rationale.inference.prediction import Predictor
from t5x_rationale.inference.thought_generation import ThoughtDecodeConfig
from t5x_rationale.objectives.pinto import choice_predictions
from t5x_rationale.runtime.host_memory import reexec_with_huge_pages
from t5x_rationale.runtime.partitioning import MeshConfig, Partitioner, create_mesh
from t5x_rationale.runtime.run_files import write_text_atomic

CHOICE_FAITHFULNESS_NOTE = (
    "not applicable: a multiple-choice student reads the rationale as input and decodes no "
    "answer after it, so no forced rationale can be continued"
)


def evaluate(
    *,
    model_config=gin.REQUIRED,
    mixture_or_task_name: str = gin.REQUIRED,
    checkpoint_path: Optional[str] = None,
    run_dir: Optional[str] = None,
    output_dir: Optional[str] = None,
    split: str = "validation",
    input_length: int = 128,
    decode_config: DecodeConfig = DecodeConfig(max_decode_length=128),
    batch_size: int = 32,
    max_examples: Optional[int] = None,
    mesh: MeshConfig = MeshConfig(),
    vocabulary_path: Optional[str] = None,
    thoughts: Optional[ThoughtDecodeConfig] = None,
    seed: int = 0,
    faithfulness: Optional[bool] = None,
    faithfulness_format: Optional[str] = None,
    task_feature_lengths: Optional[Mapping[str, int]] = None,
    converter=None,
) -> dict[str, dict[str, Optional[float]]]:
    """Decodes every task of `mixture_or_task_name` that has metrics; returns task -> metrics.

    Args:
      model_config: the architecture the checkpoint was trained with.
      mixture_or_task_name: a task, or a mixture whose scored tasks are each evaluated.
      checkpoint_path: a run's `checkpoints/` directory (latest step) or one step directory.
      run_dir: instead of `checkpoint_path`: a training run directory (its latest checkpoint).
      output_dir: where metrics and predictions go (default: `<run>/eval` beside checkpoints).
      split, max_examples: which examples.
      input_length: encoder input / prompt length (longer inputs truncated and counted).
      decode_config: decoding method and length cap.
      batch_size: global decode batch.
      mesh, vocabulary_path, seed: as in training; seed feeds sampling.
      thoughts: thought settings for a Quiet-STaR model (see `Predictor`).
      faithfulness: counterfactual consistency (`data/faithfulness.py`). None: for every task
        whose output format is known (a label-only task reports None, not applicable);
        True: for every task (an unknown format is an error); False: never.
      faithfulness_format: one of `faithfulness.KINDS` ('cot', 'factual', 'rationale',
        'label') for every task, instead of the format its name gives.
      task_feature_lengths, converter: for a multiple-choice task only, its batches (as in
        training: `ChoicesConverter` and its `inputs` / `rationale` / `choices` lengths).

    A task's scores hold None for a metric that is not applicable (printed `n/a`).
    """
    if (checkpoint_path is None) == (run_dir is None):
        raise ValueError("give exactly one of evaluate.checkpoint_path and evaluate.run_dir")
    checkpoint_path = checkpoint_path or os.path.join(run_dir, "checkpoints")
    vocabulary = load_vocabulary(vocabulary_path, model_config)
    check_task(mixture_or_task_name, vocabulary)
    output_dir = output_dir or os.path.join(
        os.path.dirname(os.path.abspath(checkpoint_path.rstrip("/"))), "eval"
    )
    if is_choice_task(mixture_or_task_name):
        spec = StreamSpec(
            mixture_or_task_name,
            split,
            task_feature_lengths or {},
            batch_size,
            shuffle=False,
            num_epochs=1,
            host_sharding="rows",
        )
        scores = _evaluate_choices(
            spec, converter, model_config, checkpoint_path, mesh, max_examples, output_dir
        )
        return {mixture_or_task_name: scores}
    check_decode_eos(decode_config.eos_id, vocabulary)
    tasks = scored_tasks(mixture_or_task_name)
    formats = {
        t.name: _faithfulness_format(t.name, faithfulness, faithfulness_format) for t in tasks
    }
    predictor = Predictor(
        model_config,
        checkpoint_path,
        Partitioner(create_mesh(mesh)),
        vocabulary,
        decode_config,
        batch_size=batch_size,
        input_length=input_length,
        thoughts=thoughts,
    )
    results = {}
    for task in tasks:
        examples = load_examples(task.name, split, max_examples=max_examples)
        predictions = predictor.predict(examples, rng=jax.random.PRNGKey(seed))
        scores = score_task(task, examples, predictions.texts)
        scores.update(
            examples=float(len(examples)), truncated_inputs=float(predictions.truncated_inputs)
        )
        note, forced = None, None
        if formats[task.name] is not None:
            cf_scores, forced, note = _counterfactual(
                task, split, examples, formats[task.name], predictor, vocabulary, seed
            )
            scores.update(cf_scores)
        results[task.name] = scores
        stem = os.path.join(output_dir, f"{task.name}-{split}-step{predictor.step}")
        _write(stem, predictor.step, scores, note, examples, predictions.texts, forced)
        shown = " ".join(f"{k}={'n/a' if v is None else f'{v:.2f}'}" for k, v in scores.items())
        shown += f" ({note})" if note else ""
        print(f"eval {task.name} {split} step {predictor.step}: {shown}", flush=True)
    return results


def _evaluate_choices(spec, converter, model_config, checkpoint_path, mesh, max_examples, out):
    """The scores of a multiple-choice task split (PINTO's choice, no decoding), written to
    `{out}/{task}-{split}-step{N}.json`."""
    if converter is None or not spec.task_feature_lengths:
        raise ValueError(
            f"{spec.mixture_or_task!r} is a multiple-choice task: set evaluate.converter "
            "(@ChoicesConverter()) and evaluate.task_feature_lengths as in training"
        )
    partitioner = Partitioner(create_mesh(mesh))
    stream = TaskStream(spec, converter, host_rows=partitioner.host_rows(spec.batch_size))
    lengths = converter.get_model_feature_lengths(dict(spec.task_feature_lengths))
    scorer = ChoiceScorer(
        model_config,
        checkpoint_path,
        partitioner,
        choice_predictions,
        batch_size=spec.batch_size,
        input_length=lengths["encoder_input_tokens"],
    )
    result = scorer.score(_first_rows(stream, max_examples))
    scores = {
        "choice_accuracy": result.accuracy,
        "examples": float(result.rows),
        "skipped_rows": float(result.rows - result.counted),
        "truncated_inputs": float(stream.truncated_examples),
        "counterfactual_consistency": None,
    }
    shown = " ".join(f"{k}={'n/a' if v is None else f'{v:.2f}'}" for k, v in scores.items())
    note = CHOICE_FAITHFULNESS_NOTE
    print(f"eval {spec.mixture_or_task} {spec.split} step {scorer.step}: {shown} ({note})")
    if jax.process_index() == 0:
        summary = {"step": scorer.step, **scores, "faithfulness_note": note}
        stem = os.path.join(out, f"{spec.mixture_or_task}-{spec.split}-step{scorer.step}")
        os.makedirs(out, exist_ok=True)
        write_text_atomic(stem + ".json", json.dumps(summary, indent=1, sort_keys=True) + "\n")
    return scores


def _first_rows(batches, limit: Optional[int]) -> Iterator[dict]:
    """The batches up to `limit` rows in all (the last one cut short); all of them for None."""
    left = limit
    for batch in batches:
        if left is not None:
            batch = {k: v[:left] for k, v in batch.items()}
            left -= len(batch["choice_label"])
        if len(batch["choice_label"]):
            yield batch
        if left is not None and left <= 0:
            return


def _faithfulness_format(task_name: str, enabled: Optional[bool], kind: Optional[str]):
    """The task's counterfactual format, or None when consistency is not measured."""
    if enabled is False:
        return None
    fmt = faith.task_format(task_name, kind)
    if fmt is None and enabled:
        raise ValueError(
            f"evaluate.faithfulness is True but task {task_name!r} has no known output format; "
            f"set evaluate.faithfulness_format to one of {faith.KINDS}"
        )
    return fmt


def _counterfactual(task, split, examples, fmt, predictor, vocabulary, seed):
    """(scores, prediction rows, note) of counterfactual consistency on one task split: each
    example with a negative is decoded after its forced counterfactual prefix."""
    if not fmt.applicable:
        return {"counterfactual_consistency": None}, None, faith.NOT_CONDITIONED
    measured = faith.plan(fmt, examples, faith.first_negatives(task, split))
    texts = []
    if measured.cases:
        texts = predictor.predict(
            [examples[c.index] for c in measured.cases],
            rng=jax.random.PRNGKey(seed),
            prefixes=[vocabulary.encode(c.prefix) for c in measured.cases],
        ).texts
    scores, answers = faith.score(measured, texts)
    rows = faith.prediction_rows(measured, examples, texts, answers)
    return scores, rows, None if measured.cases else faith.NO_NEGATIVES


def _write(stem, step, scores, note, examples, texts, forced) -> None:
    if jax.process_index() != 0:
        return
    os.makedirs(os.path.dirname(stem), exist_ok=True)
    summary = {"step": step, **scores, **({"faithfulness_note": note} if note else {})}
    write_text_atomic(stem + ".json", json.dumps(summary, indent=1, sort_keys=True) + "\n")
    if forced is not None:
        lines = [json.dumps(row, ensure_ascii=False) for row in forced]
        write_text_atomic(stem + "-counterfactual-predictions.jsonl", "\n".join(lines) + "\n")
    rows = [
        json.dumps(
            {
                "id": text_of(ex.get("id", i)),
                "input": text_of(ex["inputs_pretokenized"]),
                "target": text_of(ex["targets_pretokenized"]),
                "prediction": text,
            },
            ensure_ascii=False,
        )
        for i, (ex, text) in enumerate(zip(examples, texts))
    ]
    write_text_atomic(stem + "-predictions.jsonl", "\n".join(rows) + "\n")


def main() -> None:
    gin_main(evaluate)


if __name__ == "__main__":
    reexec_with_huge_pages()
    main()
