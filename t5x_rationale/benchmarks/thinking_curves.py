"""Curves of Quiet-STaR runs over training, for the thinking study (docs/thinking_study.md).

    python -m t5x_rationale.benchmarks.thinking_curves --run beta1=/tmp/study/beta1 \
      --run beta100=/tmp/study/beta100 --out docs/images/thinking_study.png

Reads each run's `metrics.jsonl` (the training metrics of `quiet_star_loss`) and the
`eval/<step>/thought_eval.json` files that `evaluate_thoughts` wrote for its checkpoints, and
draws six panels: reward, share of positive advantages, thought entropy and diversity,
mixing weight, base vs mixed cross-entropy in training, and base vs mixed NLL per answer
token and on the hardest quarter of held-out tokens. Needs matplotlib (the `viz` extra).
"""

from __future__ import annotations

import argparse
import glob
import json
import os

TRAINING_PANELS = (
    ("reward (nats)", ("reward",)),
    ("positive advantages (share)", ("positive_advantage_share",)),
    ("thoughts: entropy (nats/token), distinct share", ("thought_entropy", "thought_distinct")),
    ("mixing weight w", ("mixing_weight",)),
    ("training CE: base vs mixed next", ("base_ce", "mixed_ce_next")),
)


def read_metrics(run_dir: str) -> list[dict]:
    """The rows of a run's metrics.jsonl that carry the Quiet-STaR metrics."""
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return [r for r in rows if "reward" in r]


def read_evaluations(run_dir: str) -> list[dict]:
    """`evaluate_thoughts` reports of the run's checkpoints, by step."""
    reports = []
    for path in glob.glob(os.path.join(run_dir, "eval", "*", "thought_eval.json")):
        with open(path) as f:
            reports.append(json.load(f))
    return sorted(reports, key=lambda r: r["step"])


def evaluation_series(reports: list[dict]) -> dict[str, list[float]]:
    """Per checkpoint: step, base/mixed NLL per answer token and on the hardest quarter."""
    out = {"step": [], "answer base": [], "answer mixed": [], "hard base": [], "hard mixed": []}
    for r in reports:
        hardest = r["perplexity"]["by_difficulty"][-1]
        out["step"].append(r["step"])
        out["answer base"].append(r["answer_mass"]["base_nll_per_token"])
        out["answer mixed"].append(r["answer_mass"]["mixed_nll_per_token"])
        out["hard base"].append(hardest["base_nll"])
        out["hard mixed"].append(hardest["mixed_nll"])
    return out


def plot(runs: dict[str, str], out: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(15, 8))
    for number, (name, run_dir) in enumerate(runs.items()):
        color = f"C{number}"  # one colour per run; line styles tell a panel's series apart
        rows = read_metrics(run_dir)
        steps = [r["step"] for r in rows]
        for ax, (title, keys) in zip(axes.flat, TRAINING_PANELS):
            for key, style in zip(keys, ("-", "--")):
                ax.plot(steps, [r[key] for r in rows], style, color=color, label=f"{name}: {key}")
            ax.set_title(title)
        series = evaluation_series(read_evaluations(run_dir))
        ax = axes.flat[-1]
        for key in ("answer base", "answer mixed", "hard base", "hard mixed"):
            style = ("--" if "base" in key else "-") + ("o" if "answer" in key else "s")
            ax.plot(series["step"], series[key], style, color=color, label=f"{name}: {key}")
        ax.set_title("held-out NLL/token: answers (o), hardest quarter (s)")
    for ax in axes.flat:
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    fig.savefig(out, dpi=80)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", action="append", required=True, help="NAME=RUN_DIR")
    parser.add_argument("--out", required=True, help="PNG path")
    args = parser.parse_args(argv)
    runs = {}
    for item in args.run:
        name, sep, run_dir = item.partition("=")
        if not sep:
            parser.error(f"--run {item!r} is not NAME=RUN_DIR")
        runs[name] = run_dir
    plot(runs, args.out)
    print(f"thinking_curves: wrote {args.out}")


if __name__ == "__main__":
    main()
