"""Teacher annotation: sample K rationales per question from a checkpoint and write the teacher
JSONL of the data layer (`data/teacher_jsonl.py`), with a summary of what was kept and why.

    python -m t5x_rationale.annotate --gin_file=runs/annotate.gin

Questions come from `questions_file` (`{"id"?, "input", "label"?}` JSONL) or a task split.
Each prompt is `few-shot prefix + input + prompt_suffix`; the samples go through
`generation.generate_to_shards` into `generations_dir` (resumable: run again after a kill),
then `data.annotation.teacher_rows` keeps the samples that agree with the label (or the
majority answer when there is none) as `rationales` and the others as `negatives`.
`output_file` gets the rows; `<output_file without .jsonl>.summary.json` the counts.
"""

from __future__ import annotations

import json
import os
from typing import Optional

import gin
import jax

from t5x_rationale.data.annotation import teacher_jsonl_text, teacher_rows
from t5x_rationale.data.annotation_inputs import read_few_shot, read_questions, task_questions
from t5x_rationale.data.run_inputs import check_decode_eos, check_task, load_vocabulary
from t5x_rationale.generation import GenerationConfig, generate_to_shards, read_generations
from t5x_rationale.gin_launch import main as gin_main
from t5x_rationale.inference.decoding import DecodeConfig
from t5x_rationale.runtime.host_memory import reexec_with_huge_pages
from t5x_rationale.runtime.partitioning import MeshConfig, Partitioner, create_mesh
from t5x_rationale.runtime.run_files import write_text_atomic

SAMPLING = DecodeConfig(max_decode_length=128, method="sample", temperature=0.7, top_p=0.95)


def annotate(
    *,
    model_config=gin.REQUIRED,
    checkpoint_path: str = gin.REQUIRED,
    output_file: str = gin.REQUIRED,
    questions_file: Optional[str] = None,
    mixture_or_task_name: Optional[str] = None,
    split: str = "train",
    max_questions: Optional[int] = None,
    few_shot_file: Optional[str] = None,
    prompt_suffix: str = "",
    num_samples: int = 4,
    decode_config: DecodeConfig = SAMPLING,
    input_length: int = 256,
    batch_size: int = 32,
    shard_size: int = 256,
    seed: int = 0,
    skip_long_prompts: bool = False,
    generations_dir: Optional[str] = None,
    mesh: MeshConfig = MeshConfig(),
    vocabulary_path: Optional[str] = None,
) -> dict:
    """Writes the teacher JSONL and its summary; returns the summary.

    `skip_long_prompts`: count and leave out questions whose prompt is over `input_length`
    tokens (default: stop with an error naming the first). `generations_dir` defaults to
    `<output_file without .jsonl>.generations`.
    """
    if (questions_file is None) == (mixture_or_task_name is None):
        raise ValueError(
            "give exactly one of annotate.questions_file and annotate.mixture_or_task_name"
        )
    vocabulary = load_vocabulary(vocabulary_path, model_config)
    check_decode_eos(decode_config.eos_id, vocabulary)
    if questions_file is not None:
        questions = read_questions(questions_file)[:max_questions]
    else:
        check_task(mixture_or_task_name, vocabulary)
        questions = task_questions(mixture_or_task_name, split, max_questions)
    prefix = read_few_shot(few_shot_file, prompt_suffix) if few_shot_file else ""
    prompts = [
        {"id": q["id"], "prompt": prefix + q["input"] + prompt_suffix, "question": q["input"]}
        for q in questions
    ]
    config = GenerationConfig(
        decode=decode_config,
        num_samples=num_samples,
        batch_size=batch_size,
        input_length=input_length,
        shard_size=shard_size,
        seed=seed,
        skip_long_prompts=skip_long_prompts,
    )
    stem = output_file[: -len(".jsonl")] if output_file.endswith(".jsonl") else output_file
    generations_dir = generations_dir or stem + ".generations"
    partitioner = Partitioner(create_mesh(mesh))
    generation = generate_to_shards(
        model_config, checkpoint_path, vocabulary, prompts, generations_dir, config, partitioner
    )
    rows, counts = teacher_rows(questions, read_generations(generations_dir))
    summary = {
        **counts,
        "output_file": output_file,
        "checkpoint_step": generation["checkpoint_step"],
        "num_samples": num_samples,
        "generation": generation,
    }
    if jax.process_index() == 0:
        os.makedirs(os.path.dirname(os.path.abspath(output_file)), exist_ok=True)
        write_text_atomic(output_file, teacher_jsonl_text(rows))
        write_text_atomic(stem + ".summary.json", json.dumps(summary, indent=1) + "\n")
        print(f"annotate: wrote {len(rows)} teacher rows to {output_file}: {counts}", flush=True)
    return summary


def main() -> None:
    gin_main(annotate)


if __name__ == "__main__":
    reexec_with_huge_pages()
    main()
