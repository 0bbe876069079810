"""Side-by-side distillation comparison on the shipped corpus, one command.

    python -m t5x_rationale.compare --out_dir runs/compare [--steps 400] [--seeds 0,1] [--jobs 2]
        [--corpus synthetic_arith_multistep] [--teacher_checkpoint runs/teacher/checkpoints]

Trains the label-only, distilling step-by-step and chain-of-thought students (and the KD
student when a teacher checkpoint is given) with the same steps, batch and student, each
for every seed, evaluates each on the test split and prints a table of test accuracy (mean,
spread over seeds). Each run is the gin entry points in a subprocess, so the table is exactly
what `train` + `evaluate` with the same flags give; finished runs are reused.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import queue
import statistics
import subprocess
import sys
from typing import Optional

METHODS = {  # name -> (run file, train task kind, eval task kind)
    "label-only": ("runs/label_only.gin", "label", "label"),
    "step-by-step": ("runs/distill_step_by_step.gin", "step_by_step", "label"),
    "chain-of-thought": ("runs/distill_cot.gin", "cot", "cot"),
    "teacher-KD (CoT)": ("runs/distill_kd.gin", "cot", "cot"),
}


def _run(entry: str, flags: list[str], cpus: Optional[set[int]]) -> None:
    """One entry point in a subprocess; with `cpus`, pinned to them with single-threaded XLA."""
    cmd = [sys.executable, "-m", f"t5x_rationale.{entry}", *flags]
    env = dict(os.environ)
    if cpus is not None:
        env["XLA_FLAGS"] = (
            env.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false"
        ).strip()
    print("+", " ".join(cmd), flush=True)
    subprocess.run(
        cmd,
        check=True,
        env=env,
        preexec_fn=None if cpus is None else (lambda: os.sched_setaffinity(0, cpus)),
    )


def run_method(
    name: str,
    *,
    corpus: str,
    out_dir: str,
    steps: int,
    seed: int,
    teacher: Optional[str],
    cpus: Optional[set[int]] = None,
) -> float:
    """Trains and evaluates one student on `corpus`; returns its test answer accuracy (%)."""
    gin_file, train_kind, eval_kind = METHODS[name]
    eval_task = f"{corpus}_{eval_kind}"
    run_dir = os.path.join(out_dir, f"{name.split()[0].lower()}-seed{seed}")
    flags = [
        f"--gin_file={gin_file}",
        f"--gin.RUN_DIR='{run_dir}'",
        f"--gin.TRAIN_STEPS={steps}",
        f"--gin.TASK='{corpus}_{train_kind}'",
        f"--gin.EVAL_TASK='{eval_task}'",
        f"--gin.train.seed={seed}",
        f"--gin.train.data_seed={seed}",
    ]
    if teacher and name.startswith("teacher"):  # only the KD student reads it
        flags.append(f"--gin.TEACHER_CHECKPOINT='{teacher}'")
    _run("train", flags + ["--gin.train.console=False"], cpus)
    result = os.path.join(run_dir, "eval", f"{eval_task}-test-step{steps}.json")
    if not os.path.exists(result):
        _run("evaluate", flags, cpus)
    with open(result) as f:
        return json.load(f)["answer_accuracy"]


def table(results: dict[str, list[float]], seeds: list[int], steps: int) -> str:
    """A Markdown table: method, per-seed accuracies, mean and spread."""
    lines = [
        f"| student ({steps} steps) | test accuracy per seed {seeds} | mean | spread (max - min) |",
        "| --- | --- | --- | --- |",
    ]
    for name, accs in results.items():
        per_seed = ", ".join(f"{a:.1f}" for a in accs)
        lines.append(
            f"| {name} | {per_seed} | {statistics.mean(accs):.1f} | {max(accs) - min(accs):.1f} |"
        )
    return "\n".join(lines)


def run_all(runs: list[tuple[str, int]], jobs: int, **kwargs) -> dict[tuple[str, int], float]:
    """Every (method, seed) run; with jobs > 1, that many at once, each pinned to its own CPUs.

    Small students use two cores poorly (XLA splits their small matmuls across threads), so
    separate single-threaded runs finish the same work sooner than one run at a time.
    """
    if jobs <= 1:
        return {(n, s): run_method(n, seed=s, **kwargs) for n, s in runs}
    cpus = sorted(os.sched_getaffinity(0))
    free = queue.Queue()
    for i in range(jobs):
        free.put(set(cpus[i::jobs]))

    def one(run):
        mine = free.get()
        try:
            return run_method(run[0], seed=run[1], cpus=mine, **kwargs)
        finally:
            free.put(mine)

    with concurrent.futures.ThreadPoolExecutor(jobs) as pool:
        return dict(zip(runs, pool.map(one, runs)))


def main(argv: Optional[list[str]] = None) -> str:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out_dir", default="runs/compare")
    p.add_argument(
        "--corpus",
        default="synthetic_arith_multistep",
        help="a registered rationale dataset: synthetic_arith_multistep (3-4 operations on "
        "numbers up to 12), synthetic_arith_easy (2 operations), synthetic_arith (2-4)",
    )
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--seeds", default="0,1")
    cpus = len(os.sched_getaffinity(0))
    p.add_argument(
        "--jobs",
        type=int,
        default=min(2, cpus),
        help="runs at once, each on its own CPUs (default: 2 on a machine with 2+ cores)",
    )
    p.add_argument(
        "--teacher_checkpoint",
        help="adds the KD student (teacher trained with distill_kd.gin's shape)",
    )
    args = p.parse_args(argv)
    if args.jobs > cpus:
        raise ValueError(f"--jobs {args.jobs} exceeds the {cpus} CPUs available")
    seeds = [int(s) for s in args.seeds.split(",")]
    names = [n for n in METHODS if args.teacher_checkpoint or not n.startswith("teacher")]
    # Longest runs first (decoding rationales, then training on them), so the last to start
    # are short.
    cost = {"cot": 0, "step_by_step": 1}
    order = sorted(
        ((n, s) for n in names for s in seeds), key=lambda r: cost.get(METHODS[r[0]][1], 2)
    )
    done = run_all(
        order,
        args.jobs,
        corpus=args.corpus,
        out_dir=args.out_dir,
        steps=args.steps,
        teacher=args.teacher_checkpoint,
    )
    results = {n: [done[n, s] for s in seeds] for n in names}
    text = table(results, seeds, args.steps)
    print(text, flush=True)
    with open(os.path.join(args.out_dir, "comparison.md"), "w") as f:
        f.write(text + "\n")
    return text


if __name__ == "__main__":
    main()
