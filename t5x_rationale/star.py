"""STaR self-training entry point (Zelikman et al. 2022; docs/star.md).

    python -m t5x_rationale.star --gin_file=runs/star.gin
    python -m t5x_rationale.star --compare [--out_dir runs/star_compare] [--seeds 0,1]

Iteration n generates a rationale and answer for every training question with model n - 1,
keeps the correct ones, rationalizes the wrong ones (the gold answer as a hint in the prompt,
kept without it and only if it now reaches that answer) and fine-tunes from the original base
on the seed set plus everything kept, with ~20% more steps each iteration. `out_dir/iter-n/`
holds the generations, `kept.jsonl`, `stats.json`, the training run and its test accuracy.
Running the same command again resumes at the first unfinished phase.

`--compare` runs the comparison on the shipped corpus (`self_training/comparison.py`).
"""

from __future__ import annotations

import dataclasses
import os
import sys
from typing import Mapping, Optional

import gin

from t5x_rationale import evaluate as evaluate_entry
from t5x_rationale import train as train_entry
from t5x_rationale.data.registry import register_jsonl
from t5x_rationale.data.run_inputs import load_vocabulary
from t5x_rationale.generation import GenerationConfig, generate_to_shards, read_generations
from t5x_rationale.gin_launch import main as gin_main
from t5x_rationale.inference.decoding import DecodeConfig
from t5x_rationale.runtime.host_memory import reexec_with_huge_pages
from t5x_rationale.runtime.optimizers import OptimizerConfig
from t5x_rationale.runtime.partitioning import MeshConfig, Partitioner, create_mesh
from t5x_rationale.self_training import comparison
from t5x_rationale.self_training.loop import StarPlan, StarWork, run_star
from t5x_rationale.self_training.questions import (
    read_questions,
    read_seed,
    write_corpus_split,
)


@dataclasses.dataclass(frozen=True)
class ModelWork:
    """Training, evaluation and generation of one model shape on one mesh (`StarWork`)."""

    model_config: object
    task_feature_lengths: Mapping[str, int]
    batch_size: int
    optimizer: OptimizerConfig
    mesh: MeshConfig
    seed: int
    eval_corpus: str
    decode: DecodeConfig
    eval_batch_size: int
    eval_examples: Optional[int]
    generation: GenerationConfig
    save_every: int
    console: bool

    def finetune(self, tag, train_file, steps, run_dir, init_from, kind="cot"):
        """Trains `tag`'s teacher JSONL as its `kind` task from `init_from` (None: fresh)."""
        names = register_jsonl(f"star_{tag.replace('-', '_')}", train=train_file, overwrite=True)
        warmup = min(self.optimizer.warmup_steps, steps // 2)
        optimizer = dataclasses.replace(self.optimizer, total_steps=steps, warmup_steps=warmup)
        return train_entry.train(
            model_config=self.model_config,
            mixture_or_task_name=getattr(names, kind),
            task_feature_lengths=dict(self.task_feature_lengths),
            batch_size=self.batch_size,
            num_steps=steps,
            run_dir=run_dir,
            optimizer=optimizer,
            mesh=self.mesh,
            seed=self.seed,
            data_seed=self.seed,
            init_from=init_from,
            save_every=self.save_every,
            log_every=10,
            measure_mfu=False,
            console=self.console,
        )

    def evaluate(self, checkpoint, out_dir, kind="cot") -> float:
        """Test accuracy (%) of `checkpoint` on the corpus's `kind` task."""
        task = f"{self.eval_corpus}_{kind}"
        scores = evaluate_entry.evaluate(
            model_config=self.model_config,
            mixture_or_task_name=task,
            checkpoint_path=checkpoint,
            output_dir=out_dir,
            split="test",
            input_length=self.task_feature_lengths["inputs"],
            decode_config=self.decode,
            batch_size=self.eval_batch_size,
            max_examples=self.eval_examples,
            mesh=self.mesh,
            faithfulness=False,
        )
        return scores[task]["answer_accuracy"]

    def generate(self, checkpoint, prompts, out_dir):
        vocabulary = load_vocabulary(None, self.model_config)
        partitioner = Partitioner(create_mesh(self.mesh))
        args = (self.model_config, checkpoint, vocabulary, prompts, out_dir, self.generation)
        return generate_to_shards(*args, partitioner)

    def work(self) -> StarWork:
        return StarWork(self.generate, read_generations, self.finetune, self.evaluate)


def star(
    *,
    model_config=gin.REQUIRED,
    out_dir: str = gin.REQUIRED,
    initial_checkpoint: Optional[str] = None,
    fresh_base: bool = False,
    iterations: int = 3,
    base_steps: int = 100,
    growth: float = 1.2,
    corpus: str = "synthetic_arith_easy",
    questions_file: Optional[str] = None,
    seed_file: Optional[str] = None,
    num_seed: int = 0,
    num_questions: int = 0,
    hinted_seed: bool = True,
    rationalize: bool = True,
    task_feature_lengths: Mapping[str, int] = gin.REQUIRED,
    batch_size: int = 32,
    optimizer: OptimizerConfig = OptimizerConfig(),
    mesh: MeshConfig = MeshConfig(),
    seed: int = 0,
    decode_config: DecodeConfig = DecodeConfig(max_decode_length=128),
    generation_batch_size: int = 32,
    shard_size: int = 256,
    eval_batch_size: int = 100,
    eval_examples: Optional[int] = None,
    save_every: int = 50,
    console: bool = True,
    baselines: bool = False,
    baseline_steps: int = 120,
) -> list[dict]:
    """Runs (or resumes) the STaR loop; returns each iteration's stats.

    Args:
      model_config: the student's architecture.
      out_dir: `iter-n/` per iteration, `summary.json`.
      initial_checkpoint: model 0, which generates in iteration 1, and the original base every
        iteration fine-tunes from (never model n - 1). Default: a CoT student of the seed set
        (and its hinted copies) trained for `baseline_steps` from the fresh init of `seed`.
      fresh_base: fine-tune every iteration from the fresh init of `seed` instead.
      iterations, base_steps, growth: iteration n trains `base_steps * growth ** (n - 1)`.
      corpus: the shipped corpus whose test split is evaluated (`{corpus}_cot`) and, without
        `questions_file`, whose first `num_seed` train questions are the seed set (one
        teacher rationale each) and next `num_questions` the questions (labels only).
      questions_file, seed_file: teacher-JSONL questions (labels used, rationales ignored)
        and seed rows (trained on in every iteration) instead.
      hinted_seed: also train on the seed rows with the hint in their input.
      rationalize: regenerate the wrong questions with the hint.
      task_feature_lengths, batch_size, optimizer, mesh, seed, save_every, console: as `train`
        (the schedule's total and warmup follow each iteration's steps).
      decode_config: greedy (STaR's near-greedy) decoding for generation and evaluation.
      generation_batch_size, shard_size: generation's decode batch and prompts per shard.
      eval_batch_size, eval_examples: the test evaluation (None: every test question).
      baselines, baseline_steps: first train and evaluate the comparison's baselines
        (`self_training/comparison.py`; the corpus split only); writes `comparison.json`.
    """
    files = {}
    if questions_file is None:
        files = write_corpus_split(os.path.join(out_dir, "data"), corpus, num_seed, num_questions)
        questions_file, seed_file = files["questions"], files["seed"] if num_seed else None
    if baselines and not (files and num_seed):
        raise ValueError("star.baselines needs the corpus split with num_seed > 0")
    questions, seed_rows = read_questions(questions_file), read_seed(seed_file)
    model = ModelWork(
        model_config,
        dict(task_feature_lengths),
        batch_size,
        optimizer,
        mesh,
        seed,
        corpus,
        decode_config,
        eval_batch_size,
        eval_examples,
        _generation_config(
            decode_config, generation_batch_size, task_feature_lengths, shard_size, seed
        ),
        save_every,
        console,
    )
    rows = []
    if baselines:
        rows = comparison.baseline_rows(model.work(), files, out_dir, baseline_steps, hinted_seed)
    elif initial_checkpoint is None and seed_file:
        rows = [
            comparison.seed_student(
                model.work(), seed_file, out_dir, baseline_steps, hinted_seed, evaluate=False
            )
        ]
    initial_checkpoint = initial_checkpoint or (rows[0]["checkpoint"] if rows else None)
    plan = StarPlan(
        out_dir,
        iterations,
        base_steps,
        growth,
        initial_checkpoint=initial_checkpoint,
        fresh_base=fresh_base,
        hinted_seed=hinted_seed,
        rationalize=rationalize,
    )
    stats = run_star(plan, questions, seed_rows, model.work())
    if baselines:
        comparison.write_result(out_dir, rows + comparison.star_rows(stats))
    return stats


def _generation_config(decode, batch_size, lengths, shard_size, seed) -> GenerationConfig:
    """Greedy generation in one compiled width (no length buckets); a prompt over the input
    length is skipped and counted as unparseable."""
    return GenerationConfig(
        skip_long_prompts=True,
        decode=decode,
        batch_size=batch_size,
        input_length=lengths["inputs"],
        shard_size=shard_size,
        seed=seed,
        bucket=False,
    )


def main() -> None:
    if "--compare" in sys.argv[1:]:
        comparison.main(sys.argv[1:])
        return
    gin_main(star)


if __name__ == "__main__":
    reexec_with_huge_pages()
    main()
