"""Side-by-side distillation comparison on the shipped corpus, one command.

    python -m t5x_rationale.compare --out_dir runs/compare [--steps 200] [--seeds 0,1]
        [--teacher_checkpoint runs/teacher/checkpoints]

Trains the label-only, distilling step-by-step and chain-of-thought students (and the KD
student when a teacher checkpoint is given) with the same steps, batch and student, each
for every seed, evaluates each on the test split and prints a table of test accuracy (mean,
spread over seeds). Each run is the gin entry points in a subprocess, so the table is exactly
what `train` + `evaluate` with the same flags give; finished runs are reused.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from typing import Optional

METHODS = {  # name -> (run file, eval task)
    "label-only": ("runs/label_only.gin", "synthetic_arith_label"),
    "step-by-step": ("runs/distill_step_by_step.gin", "synthetic_arith_label"),
    "chain-of-thought": ("runs/distill_cot.gin", "synthetic_arith_cot"),
    "teacher-KD (CoT)": ("runs/distill_kd.gin", "synthetic_arith_cot"),
}


def _run(entry: str, flags: list[str]) -> None:
    cmd = [sys.executable, "-m", f"t5x_rationale.{entry}", *flags]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def run_method(name: str, *, out_dir: str, steps: int, seed: int, teacher: Optional[str]) -> float:
    """Trains and evaluates one student; returns its test answer accuracy (%)."""
    gin_file, eval_task = METHODS[name]
    run_dir = os.path.join(out_dir, f"{name.split()[0].lower()}-seed{seed}")
    flags = [f"--gin_file={gin_file}", f"--gin.RUN_DIR='{run_dir}'", f"--gin.TRAIN_STEPS={steps}",
             f"--gin.train.seed={seed}", f"--gin.train.data_seed={seed}"]
    if teacher:
        flags.append(f"--gin.TEACHER_CHECKPOINT='{teacher}'")
    _run("train", flags + ["--gin.train.console=False"])
    result = os.path.join(run_dir, "eval", f"{eval_task}-test-step{steps}.json")
    if not os.path.exists(result):
        _run("evaluate", flags)
    with open(result) as f:
        return json.load(f)["answer_accuracy"]


def table(results: dict[str, list[float]], seeds: list[int], steps: int) -> str:
    """A Markdown table: method, per-seed accuracies, mean and spread."""
    lines = [f"| student ({steps} steps) | test accuracy per seed {seeds} | mean | spread (max - min) |",
             "| --- | --- | --- | --- |"]
    for name, accs in results.items():
        per_seed = ", ".join(f"{a:.1f}" for a in accs)
        lines.append(f"| {name} | {per_seed} | {statistics.mean(accs):.1f} | {max(accs) - min(accs):.1f} |")
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> str:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out_dir", default="runs/compare")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--teacher_checkpoint", help="adds the KD student (teacher trained with distill_kd.gin's shape)")
    args = p.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    names = [n for n in METHODS if args.teacher_checkpoint or not n.startswith("teacher")]
    results = {n: [run_method(n, out_dir=args.out_dir, steps=args.steps, seed=s,
                              teacher=args.teacher_checkpoint if n.startswith("teacher") else None)
                   for s in seeds] for n in names}
    text = table(results, seeds, args.steps)
    print(text, flush=True)
    with open(os.path.join(args.out_dir, "comparison.md"), "w") as f:
        f.write(text + "\n")
    return text


if __name__ == "__main__":
    main()
