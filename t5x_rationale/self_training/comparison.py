"""STaR against its baselines on the shipped corpus, one command, several seeds.

    python -m t5x_rationale.star --compare [--out_dir runs/star_compare] [--seeds 0,1]

Per seed, one `star` run with `star.baselines = True` (its own process, pinned to its own
CPUs): a CoT student on the seed set only (STaR's model 0), a label-only student on every
question's answer, a CoT student on every teacher rationale (the upper bound), then STaR's
iterations. Prints and writes `comparison.md` (test accuracy per row and seed, mean, wall time
per row) and `comparison.json`.
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
from typing import Optional

from t5x_rationale.runtime.run_files import write_text_atomic
from t5x_rationale.self_training.questions import read_seed, training_rows, write_jsonl

RESULT = "comparison.json"


def seed_student(
    work, seed_file: str, out_dir: str, steps: int, hinted_seed: bool, evaluate: bool = True
) -> dict:
    """The CoT student of the seed set (and its hinted copies): STaR's model 0 when no
    initial checkpoint is given; its row, with its final checkpoint (and, with `evaluate`,
    its test accuracy)."""
    seed_train = os.path.join(out_dir, "data", "seed_train.jsonl")
    os.makedirs(os.path.dirname(seed_train), exist_ok=True)
    write_jsonl(seed_train, training_rows(read_seed(seed_file), [], hinted_seed))
    name = "CoT, seed set only"
    return _baseline(work, out_dir, steps, "cot-seed", name, seed_train, "cot", evaluate)


def baseline_rows(work, files: dict, out_dir: str, steps: int, hinted_seed: bool) -> list[dict]:
    """The seed-set student, the label-only and the all-rationales CoT students (each reused
    once its result is written)."""
    runs = (
        ("label-only", "label-only, all answers", files["all_rationales"], "label"),
        ("cot-all", "CoT, all teacher rationales", files["all_rationales"], "cot"),
    )
    first = seed_student(work, files["seed"], out_dir, steps, hinted_seed)
    return [first] + [_baseline(work, out_dir, steps, *run) for run in runs]


def _baseline(work, out_dir, steps, key, name, train_file, kind, evaluate=True) -> dict:
    directory = os.path.join(out_dir, "baselines", key)
    path = os.path.join(directory, "result.json")
    if os.path.exists(path):
        with open(path) as f:
            row = json.load(f)
        if row["accuracy"] is not None or not evaluate:  # else: trained, not yet evaluated
            return row
    start = time.perf_counter()
    work.finetune(key, train_file, steps, directory, None, kind)
    checkpoint = os.path.join(directory, "checkpoints", str(steps))
    accuracy = work.evaluate(checkpoint, f"{directory}/eval", kind) if evaluate else None
    row = {"key": key, "row": name, "accuracy": accuracy, "checkpoint": checkpoint}
    row.update(steps=steps, seconds=round(time.perf_counter() - start, 1))
    os.makedirs(directory, exist_ok=True)
    write_text_atomic(path, json.dumps(row, indent=1) + "\n")
    return row


def star_rows(stats: list[dict]) -> list[dict]:
    """The STaR iterations as comparison rows."""
    return [
        {
            "key": f"star-{s['iteration']}",
            "row": f"STaR iteration {s['iteration']}",
            "coverage": s["coverage_pct"],
            "accuracy": s["test_accuracy"],
            "steps": s["steps"],
            "seconds": round(sum(s["seconds"].values()), 1),
        }
        for s in stats
    ]


def write_result(out_dir: str, rows: list[dict]) -> None:
    write_text_atomic(os.path.join(out_dir, RESULT), json.dumps(rows, indent=1) + "\n")


def table(per_seed: dict[int, list[dict]], wall: float, note: str) -> str:
    """Markdown: one line per row, test accuracy per seed, mean, wall seconds per seed."""
    seeds = sorted(per_seed)
    order = [r["key"] for r in per_seed[seeds[0]]]
    lines = [
        f"| row | steps | test accuracy per seed {seeds} | mean | wall s per seed |",
        "| --- | --- | --- | --- | --- |",
    ]
    for key in order:
        rows = [next(r for r in per_seed[s] if r["key"] == key) for s in seeds]
        accs = [r["accuracy"] for r in rows]
        shown = ", ".join(f"{a:.1f}" for a in accs)
        times = ", ".join(f"{r['seconds']:.0f}" for r in rows)
        name = rows[0]["row"]
        if "coverage" in rows[0]:
            covered = ", ".join(f"{r['coverage']:.0f}%" for r in rows)
            name += f" (coverage {covered})"
        lines.append(
            f"| {name} | {rows[0]['steps']} | {shown} | {statistics.mean(accs):.1f} | {times} |"
        )
    lines += ["", note, "", f"Wall time of the whole command: {wall:.0f} s."]
    return "\n".join(lines) + "\n"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="STaR against its baselines (docs/star.md)")
    p.add_argument("--out_dir", default="runs/star_compare")
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--gin_file", default="runs/star_compare.gin")
    p.add_argument("--num_seed", type=int, default=200, help="questions with a rationale")
    p.add_argument("--num_questions", type=int, default=300, help="questions with a label only")
    p.add_argument("--iterations", type=int, default=2)
    p.add_argument("--steps", type=int, default=60, help="each baseline's steps")
    p.add_argument("--star_steps", type=int, default=40, help="STaR's first iteration's steps")
    p.add_argument("--eval_examples", type=int, default=200, help="test questions scored")
    p.add_argument("--jobs", type=int, default=min(2, len(os.sched_getaffinity(0))))
    return p


def _seed_command(args, seed: int) -> list[str]:
    bindings = {
        "star.out_dir": repr(os.path.join(args.out_dir, f"seed-{seed}")),
        "star.seed": seed,
        "star.baselines": True,
        "star.num_seed": args.num_seed,
        "star.num_questions": args.num_questions,
        "star.iterations": args.iterations,
        "star.baseline_steps": args.steps,
        "star.base_steps": args.star_steps,
        "star.eval_examples": args.eval_examples,
        "star.console": False,
    }
    flags = [f"--gin.{k}={v}" for k, v in bindings.items()]
    return [sys.executable, "-m", "t5x_rationale.star", f"--gin_file={args.gin_file}", *flags]


def _run_seed(args, seed: int, cpus: Optional[set[int]]) -> list[dict]:
    out = os.path.join(args.out_dir, f"seed-{seed}")
    env = dict(os.environ)
    if cpus is not None:  # small models use two cores poorly: one single-threaded run per core
        env["XLA_FLAGS"] = (
            env.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false"
        ).strip()
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "log.txt"), "a") as log:
        command = _seed_command(args, seed)
        print("+", " ".join(command), flush=True)
        subprocess.run(
            command,
            check=True,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=None if cpus is None else (lambda: os.sched_setaffinity(0, cpus)),
        )
    with open(os.path.join(out, RESULT)) as f:
        return json.load(f)


def main(argv: list[str]) -> str:
    args = _parser().parse_args([a for a in argv if a != "--compare"])
    seeds = [int(s) for s in args.seeds.split(",")]
    cpus = sorted(os.sched_getaffinity(0))
    free: queue.Queue = queue.Queue()
    for i in range(max(args.jobs, 1)):
        free.put(set(cpus[i :: args.jobs]) if args.jobs > 1 else None)

    def one(seed: int) -> list[dict]:
        mine = free.get()
        try:
            return _run_seed(args, seed, mine)
        finally:
            free.put(mine)

    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(max(args.jobs, 1)) as pool:
        per_seed = dict(zip(seeds, pool.map(one, seeds)))
    wall = time.perf_counter() - start
    note = (
        f"{args.num_seed} seed questions with a teacher rationale, {args.num_questions} more "
        f"with a label only; first {args.eval_examples} test questions; STaR starts from the "
        "seed-set student (model 0) and fine-tunes it again in each iteration (never model "
        "n - 1) on the seed set (and its hinted copies) plus the kept rationales; wall time "
        "per row and seed (STaR rows: that iteration's generation, rationalization, "
        "fine-tuning and test), one CPU core per seed."
    )
    text = table(per_seed, wall, note)
    print(text, flush=True)
    write_text_atomic(os.path.join(args.out_dir, "comparison.md"), text)
    summary = {"args": vars(args), "wall_s": wall, "rows": per_seed}
    write_text_atomic(os.path.join(args.out_dir, RESULT), json.dumps(summary, indent=1) + "\n")
    return text
