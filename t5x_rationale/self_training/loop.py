"""The STaR loop (docs/star.md): per iteration, generate with model n - 1, keep the correct
rationales, rationalize the wrong questions with the gold answer as a hint, fine-tune from the
original base on everything kept, evaluate. Each phase is recorded in the iteration's
`state.json` when it ends, so a killed loop starts again at its first unfinished phase.

The model-facing work comes in as callables (`StarWork`), so this module needs neither the
training nor the evaluation entry point.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Callable, Optional, Sequence

from t5x_rationale.runtime.run_files import write_text_atomic
from t5x_rationale.self_training import loop_state as ls
from t5x_rationale.self_training.hints import with_hint
from t5x_rationale.self_training.questions import training_rows, write_jsonl
from t5x_rationale.self_training.selection import iteration_stats, judge, kept_rows


@dataclasses.dataclass(frozen=True)
class StarPlan:
    """What the loop does, independent of the model.

    Attributes:
      out_dir: gets `iter-1/`, `iter-2/`, ... and `summary.json`.
      iterations: how many outer iterations.
      base_steps, growth: iteration n fine-tunes `base_steps * growth ** (n - 1)` steps.
      initial_checkpoint: model 0, which generates in iteration 1, and the original base
        every iteration fine-tunes from (never model n - 1).
      fresh_base: fine-tune every iteration from the fresh init of the run's seed instead.
      hinted_seed: also train on the seed rows with the hint in their input (how a hint is
        used; STaR's rationalization prompt).
      rationalize: regenerate wrong questions with the hint.
    """

    out_dir: str
    iterations: int
    base_steps: int
    growth: float = 1.2
    initial_checkpoint: Optional[str] = None
    fresh_base: bool = False
    hinted_seed: bool = True
    rationalize: bool = True

    def __post_init__(self):
        if self.iterations < 1:
            raise ValueError(f"star needs at least one iteration, got {self.iterations}")
        if self.initial_checkpoint is None:
            raise ValueError("STaR needs an initial checkpoint (or a seed set to train one)")
        ls.iteration_steps(self.base_steps, 1, self.growth)  # validates

    def steps(self, iteration: int) -> int:
        return ls.iteration_steps(self.base_steps, iteration, self.growth)

    def generator(self, iteration: int) -> str:
        return ls.model_for_generation(self.out_dir, iteration, self.initial_checkpoint, self.steps)

    def finetune_from(self, iteration: int) -> Optional[str]:
        """The same base in every iteration (None: the fresh init)."""
        del iteration
        return None if self.fresh_base else self.initial_checkpoint


@dataclasses.dataclass(frozen=True)
class StarWork:
    """The model-facing steps.

    generate(checkpoint, prompts, out_dir): `{"id", "prompt", "label"}` rows into shards
      (resuming at the first unfinished one); read(out_dir) -> rows with "id" and "text".
    finetune(tag, train_file, steps, run_dir, init_from, kind="cot"): trains (resuming) on the
      teacher JSONL `train_file`'s `kind` task until `steps`; init_from None: the fresh init.
    evaluate(checkpoint, out_dir, kind="cot") -> test accuracy (%).
    """

    generate: Callable[[str, list, str], object]
    read: Callable[[str], list]
    finetune: Callable[..., object]
    evaluate: Callable[[str, str], float]


def run_star(
    plan: StarPlan,
    questions: Sequence[dict],
    seed_rows: Sequence[dict],
    work: StarWork,
    log: Callable[[str], None] = print,
) -> list[dict]:
    """Runs (or resumes) every iteration; returns their stats."""
    if not questions:
        raise ValueError("STaR has no training questions")
    results = []
    for n in range(1, plan.iterations + 1):
        results.append(run_iteration(plan, n, questions, seed_rows, work, log))
        log(f"star: iteration {n}: {_line(results[-1])}")
    write_text_atomic(
        os.path.join(plan.out_dir, "summary.json"), json.dumps(results, indent=1) + "\n"
    )
    return results


def _line(stats: dict) -> str:
    keys = ("correct_pct", "rationalized_pct", "coverage_pct", "test_accuracy")
    return ", ".join(f"{k} {stats.get(k)}" for k in keys)


def run_iteration(plan, n, questions, seed_rows, work: StarWork, log) -> dict:
    """One iteration, from its first unfinished phase."""
    d = ls.iteration_dir(plan.out_dir, n)
    state = ls.IterationState(d)
    model = plan.generator(n)

    def phase(name: str, fn: Callable[[], object]) -> None:
        if not state.done(name):
            log(f"star: iteration {n}: {name}")
            start = time.perf_counter()
            fn()
            state.finish(name, time.perf_counter() - start)

    prompts = [_prompt(q, q["input"]) for q in questions]
    phase("generate", lambda: work.generate(model, prompts, f"{d}/generate"))
    first = _texts(work.read(f"{d}/generate"))
    wrong = [q for q in questions if not judge(q, first.get(q["id"], ""), None)["correct"]]
    hinted_prompts = [_prompt(q, with_hint(q["input"], q["label"])) for q in wrong]
    hinted_prompts = hinted_prompts if plan.rationalize else []
    if hinted_prompts:
        phase("rationalize", lambda: work.generate(model, hinted_prompts, f"{d}/rationalize"))
    hinted = _texts(work.read(f"{d}/rationalize")) if hinted_prompts else {}
    phase("select", lambda: _select(plan, n, d, questions, first, hinted, seed_rows, model))
    init, steps = plan.finetune_from(n), plan.steps(n)
    phase("train", lambda: work.finetune(f"iter{n}", f"{d}/train.jsonl", steps, f"{d}/train", init))

    def evaluate():
        accuracy = work.evaluate(ls.final_checkpoint(plan.out_dir, n, steps), f"{d}/eval")
        _write_stats(d, {**_read_stats(d), "test_accuracy": accuracy})

    phase("evaluate", evaluate)
    return {**_read_stats(d), "seconds": dict(state.seconds)}


def _select(plan, n, d, questions, first, hinted, seed_rows, model) -> None:
    """Judges every question; writes `generated.jsonl` (one record per question), `kept.jsonl`
    (the kept rationales, teacher JSONL), `train.jsonl` (seed + kept) and `stats.json`."""
    records = [judge(q, first.get(q["id"], ""), hinted.get(q["id"])) for q in questions]
    kept = kept_rows(records)
    rows = training_rows(seed_rows, kept, plan.hinted_seed)
    if not rows:
        raise ValueError(f"STaR iteration {n} kept no rationale and there is no seed set")
    write_jsonl(f"{d}/generated.jsonl", records)
    write_jsonl(f"{d}/kept.jsonl", kept)
    write_jsonl(f"{d}/train.jsonl", rows)
    stats = {"iteration": n, "steps": plan.steps(n), "generator": model}
    stats.update(iteration_stats(records), train_rows=len(rows))
    _write_stats(d, stats)


def _texts(rows: Sequence[dict]) -> dict[str, str]:
    """id -> the first sample's text (a prompt skipped as too long has none: it counts as
    unparseable)."""
    return {r["id"]: r["text"] for r in rows if r.get("sample", 0) == 0}


def _prompt(question: dict, text: str) -> dict:
    return {"id": question["id"], "prompt": text, "label": question["label"]}


def _write_stats(directory: str, stats: dict) -> None:
    write_text_atomic(os.path.join(directory, "stats.json"), json.dumps(stats, indent=1) + "\n")


def _read_stats(directory: str) -> dict:
    with open(os.path.join(directory, "stats.json")) as f:
        return json.load(f)
