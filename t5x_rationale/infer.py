"""Inference entry point: decode a task split, or a JSONL file of inputs, to JSONL predictions.

    python -m t5x_rationale.infer --gin_file=runs/infer.gin --gin.infer.input_file=questions.jsonl

With `input_file`, each line is `{"input": str, "id"?: ...}` and is formatted with
`input_prefix` (e.g. `"predict: "` for a step-by-step student). Otherwise the examples of
`mixture_or_task_name`/`split` are decoded. Each output line is `{"id", "input", "prediction"}`.
"""

from __future__ import annotations

import json
import os
from typing import Optional

import gin
import jax

from t5x_rationale.data.examples import load_examples, text_of
from t5x_rationale.data.reading import json_objects
from t5x_rationale.data.run_inputs import check_decode_eos, check_task, load_vocabulary
from t5x_rationale.gin_launch import main as gin_main
from t5x_rationale.inference.decoding import DecodeConfig
from t5x_rationale.inference.prediction import Predictor
from t5x_rationale.inference.thought_generation import ThoughtDecodeConfig
from t5x_rationale.runtime.host_memory import reexec_with_huge_pages
from t5x_rationale.runtime.partitioning import MeshConfig, Partitioner, create_mesh
from t5x_rationale.runtime.run_files import write_text_atomic


def read_input_file(path: str, vocabulary, input_prefix: str) -> list[dict]:
    """`{"input": ...}` JSONL rows -> examples with tokenized `inputs`; errors name file and
    line."""
    examples = []
    for line_no, row in json_objects(path, "infer input file"):
        if not isinstance(row.get("input"), str):
            raise ValueError(f"{path}:{line_no}: field 'input': expected a string")
        text = input_prefix + row["input"]
        examples.append(
            {
                "id": str(row.get("id", line_no)),
                "inputs_pretokenized": text,
                "inputs": vocabulary.encode(text) + [vocabulary.eos_id],
            }
        )
    if not examples:
        raise ValueError(f"{path}: no rows")
    return examples


def infer(
    *,
    model_config=gin.REQUIRED,
    checkpoint_path: str = gin.REQUIRED,
    output_file: str = gin.REQUIRED,
    mixture_or_task_name: Optional[str] = None,
    split: str = "test",
    input_file: Optional[str] = None,
    input_prefix: str = "",
    input_length: int = 128,
    decode_config: DecodeConfig = DecodeConfig(max_decode_length=128),
    batch_size: int = 32,
    max_examples: Optional[int] = None,
    mesh: MeshConfig = MeshConfig(),
    vocabulary_path: Optional[str] = None,
    thoughts: Optional[ThoughtDecodeConfig] = None,
    seed: int = 0,
) -> list[dict]:
    """Writes one JSONL prediction per example to `output_file` and returns the rows."""
    if (input_file is None) == (mixture_or_task_name is None):
        raise ValueError("give exactly one of infer.input_file and infer.mixture_or_task_name")
    vocabulary = load_vocabulary(vocabulary_path, model_config)
    check_decode_eos(decode_config.eos_id, vocabulary)
    if input_file is not None:
        examples = read_input_file(input_file, vocabulary, input_prefix)[:max_examples]
    else:
        check_task(mixture_or_task_name, vocabulary)
        examples = load_examples(mixture_or_task_name, split, max_examples=max_examples)
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
    predictions = predictor.predict(examples, rng=jax.random.PRNGKey(seed))
    rows = [
        {
            "id": text_of(ex.get("id", i)),
            "input": text_of(ex["inputs_pretokenized"]),
            "prediction": text,
        }
        for i, (ex, text) in enumerate(zip(examples, predictions.texts))
    ]
    if jax.process_index() == 0:
        os.makedirs(os.path.dirname(os.path.abspath(output_file)), exist_ok=True)
        write_text_atomic(
            output_file, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        )
        print(
            f"infer: wrote {len(rows)} predictions to {output_file} "
            f"(checkpoint step {predictor.step}, {predictions.truncated_inputs} inputs truncated)",
            flush=True,
        )
    return rows


def main() -> None:
    gin_main(infer)


if __name__ == "__main__":
    reexec_with_huge_pages()
    main()
