"""Evaluation entry point: decode a task split from a checkpoint and compute its metrics.

    python -m t5x_rationale.evaluate --gin_file=runs/quickstart_eval.gin

Prints one line per task (`task split step: metric=value ...`) and writes the metrics to
`{output_dir}/{task}-{split}-step{N}.json` together with the predictions as JSONL.
"""

from __future__ import annotations

import json
import os
from typing import Optional

import gin
import jax

from t5x_rationale.data.examples import load_examples, score_task, scored_tasks, text_of
from t5x_rationale.data.run_inputs import check_decode_eos, check_task, load_vocabulary
from t5x_rationale.gin_launch import main as gin_main
from t5x_rationale.inference.decoding import DecodeConfig
from t5x_rationale.inference.prediction import Predictor
from t5x_rationale.inference.thought_generation import ThoughtDecodeConfig
from t5x_rationale.runtime.host_memory import reexec_with_huge_pages
from t5x_rationale.runtime.partitioning import MeshConfig, Partitioner, create_mesh
from t5x_rationale.runtime.run_files import write_text_atomic


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
) -> dict[str, dict[str, float]]:
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
    """
    if (checkpoint_path is None) == (run_dir is None):
        raise ValueError("give exactly one of evaluate.checkpoint_path and evaluate.run_dir")
    checkpoint_path = checkpoint_path or os.path.join(run_dir, "checkpoints")
    vocabulary = load_vocabulary(vocabulary_path, model_config)
    check_task(mixture_or_task_name, vocabulary)
    check_decode_eos(decode_config.eos_id, vocabulary)
    tasks = scored_tasks(mixture_or_task_name)
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
    output_dir = output_dir or os.path.join(
        os.path.dirname(os.path.abspath(checkpoint_path.rstrip("/"))), "eval"
    )
    results = {}
    for task in tasks:
        examples = load_examples(task.name, split, max_examples=max_examples)
        predictions = predictor.predict(examples, rng=jax.random.PRNGKey(seed))
        scores = score_task(task, examples, predictions.texts)
        scores.update(
            examples=float(len(examples)), truncated_inputs=float(predictions.truncated_inputs)
        )
        results[task.name] = scores
        _write(output_dir, task.name, split, predictor.step, scores, examples, predictions.texts)
        shown = " ".join(f"{k}={v:.2f}" for k, v in scores.items())
        print(f"eval {task.name} {split} step {predictor.step}: {shown}", flush=True)
    return results


def _write(output_dir, task_name, split, step, scores, examples, texts) -> None:
    if jax.process_index() != 0:
        return
    os.makedirs(output_dir, exist_ok=True)
    stem = os.path.join(output_dir, f"{task_name}-{split}-step{step}")
    write_text_atomic(
        stem + ".json", json.dumps({"step": step, **scores}, indent=1, sort_keys=True) + "\n"
    )
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
