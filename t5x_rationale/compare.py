"""Side-by-side distillation comparison on the shipped corpus, one command.

    python -m t5x_rationale.compare --out_dir runs/compare [--steps 400] [--seeds 0,1] [--jobs 2]
        [--corpus synthetic_arith_multistep] [--teacher_checkpoint runs/teacher/checkpoints]
    python -m t5x_rationale.compare --students [all | label-only,step-by-step,cot,qcrd,scott,pinto]
        --out_dir runs/students [--steps 400] [--seeds 0,1] [--jobs 2] [--eval_examples N]

Trains the label-only, distilling step-by-step and chain-of-thought students (and the KD
student when a teacher checkpoint is given) with the same steps, batch and student, each
for every seed, evaluates each on the test split and prints a table of test accuracy (mean,
spread over seeds). Each run is the gin entry points in a subprocess, so the table is exactly
what `train` + `evaluate` with the same flags give; finished runs are reused.

`--students` compares the students of `benchmarks/student_comparison.py` (label-only,
step-by-step, chain-of-thought, QCRD, SCOTT and PINTO on the choice variant), each from its own
run file with the same steps, batch and model, and tables test accuracy, counterfactual
consistency and wall time per run; it writes `students.md` and `students.json` (every run's
numbers, read from `evaluate`'s files) under `--out_dir`.
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
import time
from typing import Callable, Optional

from t5x_rationale.benchmarks import student_comparison as sc

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


def run_all(
    runs: list[tuple[str, int]], jobs: int, fn: Callable = run_method, **kwargs
) -> dict[tuple[str, int], object]:
    """Every (method, seed) run; with jobs > 1, that many at once, each pinned to its own CPUs.

    Small students use two cores poorly (XLA splits their small matmuls across threads), so
    separate single-threaded runs finish the same work sooner than one run at a time.
    """
    if jobs <= 1:
        return {(n, s): fn(n, seed=s, **kwargs) for n, s in runs}
    cpus = sorted(os.sched_getaffinity(0))
    free = queue.Queue()
    for i in range(jobs):
        free.put(set(cpus[i::jobs]))

    def one(run):
        mine = free.get()
        try:
            return fn(run[0], seed=run[1], cpus=mine, **kwargs)
        finally:
            free.put(mine)

    with concurrent.futures.ThreadPoolExecutor(jobs) as pool:
        return dict(zip(runs, pool.map(one, runs)))


def run_student(
    key: str,
    *,
    out_dir: str,
    steps: int,
    batch: int,
    seed: int,
    eval_examples: Optional[int],
    cpus: Optional[set[int]] = None,
) -> dict:
    """Trains and evaluates one student of `student_comparison.STUDENTS` for one seed; returns
    its record (numbers from `evaluate`'s files, wall seconds of train and evaluate).

    A run whose record is already in its directory is reused, times included."""
    student = sc.STUDENTS[key]
    run_dir = os.path.join(out_dir, f"{key}-seed{seed}")
    record_path = os.path.join(run_dir, "compare-record.json")
    if os.path.exists(record_path):
        with open(record_path) as f:
            return json.load(f)
    flags = [
        f"--gin_file={student.gin_file}",
        f"--gin.RUN_DIR='{run_dir}'",
        f"--gin.TRAIN_STEPS={steps}",
        f"--gin.BATCH_SIZE={batch}",
        f"--gin.OptimizerConfig.warmup_steps={min(30, steps // 2)}",
        f"--gin.train.seed={seed}",
        f"--gin.train.data_seed={seed}",
    ]
    start = time.perf_counter()
    _run("train", flags + ["--gin.train.console=False"], cpus)
    train_s = time.perf_counter() - start
    with open(os.path.join(run_dir, "model-info.txt")) as f:
        model = f.readline().strip()
    for evaluation in student.evaluations():
        task = f"{STUDENT_CORPUS}{evaluation.suffix}"
        extra = [f"--gin.evaluate.mixture_or_task_name='{task}'"]
        extra += [f"--gin.{b}" for b in evaluation.bindings]
        if eval_examples is not None:  # and no decode batch wider than that (greedy: same text)
            extra.append(f"--gin.evaluate.max_examples={eval_examples}")
            extra.append(f"--gin.evaluate.batch_size={min(eval_examples, 250)}")
        _run("evaluate", flags + extra, cpus)
    eval_s = time.perf_counter() - start - train_s
    numbers = sc.read_numbers(student, run_dir, STUDENT_CORPUS, "test", steps)
    record = {
        "student": student.name,
        "key": key,
        "seed": seed,
        "steps": steps,
        "batch": batch,
        "run_dir": run_dir,
        "model": model,
        **numbers,
        "train_s": train_s,
        "eval_s": eval_s,
    }
    with open(record_path, "w") as f:
        json.dump(record, f, indent=1)
    return record


STUDENT_CORPUS = "synthetic_arith_multistep"  # the corpus every student's run file reads


def compare_students(args, seeds: list[int]) -> str:
    """`--students`: every (student, seed) run, then the table and files under `--out_dir`."""
    keys = sc.parse_students(args.students)
    # Longest first (QCRD's steps, SCOTT's, then rationale decoding), so the last are short.
    cost = {"qcrd": 0, "scott": 1, "cot": 2, "step-by-step": 3}
    order = sorted(((k, s) for k in keys for s in seeds), key=lambda r: cost.get(r[0], 4))
    os.makedirs(args.out_dir, exist_ok=True)
    start = time.perf_counter()
    done = run_all(
        order,
        args.jobs,
        fn=run_student,
        out_dir=args.out_dir,
        steps=args.steps,
        batch=args.batch,
        eval_examples=args.eval_examples,
    )
    wall = time.perf_counter() - start
    runs = [done[k, s] for k in keys for s in seeds]
    models = {r["model"] for r in runs}
    if len(models) != 1:
        raise RuntimeError(f"the students' models differ, the budget is not equal: {models}")
    text = sc.markdown_table(sc.summarise(runs), steps=args.steps, batch=args.batch, seeds=seeds)
    text += f"\n\nWall time of the whole command: {wall:.0f} s ({args.jobs} runs at a time).\n"
    print(text, flush=True)
    with open(os.path.join(args.out_dir, "students.md"), "w") as f:
        f.write(text)
    summary = {"steps": args.steps, "batch": args.batch, "seeds": seeds, "wall_s": wall}
    with open(os.path.join(args.out_dir, "students.json"), "w") as f:
        json.dump({**summary, "model": models.pop(), "runs": runs}, f, indent=1)
    return text


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out_dir", default="runs/compare")
    p.add_argument(
        "--corpus",
        default="synthetic_arith_multistep",
        help="a registered rationale dataset: synthetic_arith_multistep (3-4 operations on "
        "numbers up to 12), synthetic_arith_easy (2 operations), synthetic_arith (2-4); "
        "without --students only (the students' run files read synthetic_arith_multistep)",
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
    p.add_argument(
        "--students",
        nargs="?",
        const="all",
        help=f"compare these students ('all' or a comma list of {list(sc.STUDENTS)}): "
        "accuracy, counterfactual consistency and wall time",
    )
    p.add_argument("--batch", type=int, default=32, help="--students: rows per step, for all")
    p.add_argument(
        "--eval_examples",
        type=int,
        help="--students: evaluate only the first N test questions (default: all 500)",
    )
    return p


def main(argv: Optional[list[str]] = None) -> str:
    args = _parser().parse_args(argv)
    cpus = len(os.sched_getaffinity(0))
    if args.jobs > cpus:
        raise ValueError(f"--jobs {args.jobs} exceeds the {cpus} CPUs available")
    seeds = [int(s) for s in args.seeds.split(",")]
    if args.students is not None:
        return compare_students(args, seeds)
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
