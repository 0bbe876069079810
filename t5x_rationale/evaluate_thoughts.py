"""Evaluation of a Quiet-STaR checkpoint: does thinking help, and on which tokens?

    python -m t5x_rationale.evaluate_thoughts --gin_file=models/quiet_star_tiny.gin \
      --gin_file=runs/evaluate_thoughts.gin --gin.CHECKPOINT_PATH="'/tmp/quiet_star/checkpoints'" \
      --gin.OUTPUT_DIR="'/tmp/quiet_star/eval'"

Two reports, both base vs mixed (inference setting: one argmax thought per position, P = 1):

- **Perplexity on held-out text**, overall and split by token difficulty: tokens are binned
  by their base negative log-likelihood into `num_difficulty_bins` equal-count bins (edges
  reported), so "hard" means hard for the model without thoughts.
- **Answer-probability mass** on questions (the shipped corpus's validation questions, or a
  teacher-JSONL `questions_file` such as GSM8K): p(answer | question + `answer_prefix`),
  the product over the answer's tokens, with and without thoughts.

Writes `thought_eval.json` to `output_dir` and prints a table.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Optional, Sequence

import gin
import jax
import numpy as np

from t5x_rationale.data import registry, sources, synthetic
from t5x_rationale.data.examples import load_examples
from t5x_rationale.data.run_inputs import check_task, load_vocabulary
from t5x_rationale.gin_launch import main as gin_main
from t5x_rationale.inference.thought_scoring import ThoughtScorer, ThoughtScores
from t5x_rationale.quiet_star.spec import ThinkingSpec
from t5x_rationale.runtime.host_memory import reexec_with_huge_pages
from t5x_rationale.runtime.partitioning import MeshConfig, Partitioner, create_mesh
from t5x_rationale.runtime.run_files import write_text_atomic


def perplexity_by_difficulty(base_nll: np.ndarray, mixed_nll: np.ndarray, num_bins: int) -> dict:
    """Base and mixed perplexity overall and per equal-count bin of base NLL (easy to hard)."""
    if base_nll.shape != mixed_nll.shape or base_nll.ndim != 1 or not len(base_nll):
        raise ValueError("perplexity_by_difficulty needs two equal-length, non-empty 1-D arrays")
    edges = np.quantile(base_nll, np.linspace(0, 1, num_bins + 1))
    which = np.clip(np.searchsorted(edges[1:-1], base_nll, side="right"), 0, num_bins - 1)

    def summary(mask) -> dict:
        return {
            "tokens": int(mask.sum()),
            "base_ppl": float(np.exp(base_nll[mask].mean())),
            "mixed_ppl": float(np.exp(mixed_nll[mask].mean())),
            "base_nll": float(base_nll[mask].mean()),
            "mixed_nll": float(mixed_nll[mask].mean()),
        }

    bins = [
        dict(summary(which == b), base_nll_range=[float(edges[b]), float(edges[b + 1])])
        for b in range(num_bins)
        if np.any(which == b)
    ]
    return {"overall": summary(np.ones_like(base_nll, bool)), "by_difficulty": bins}


def _batches(rows: Sequence[Sequence[int]], batch_size: int, length: int):
    """(right-padded rows [n, length], their lengths [n]) per batch of `batch_size` rows."""
    for start in range(0, len(rows), batch_size):
        chunk = [list(tokens)[:length] for tokens in rows[start : start + batch_size]]
        out = np.zeros((len(chunk), length), np.int32)
        for r, tokens in enumerate(chunk):
            out[r, : len(tokens)] = tokens
        yield out, np.array([len(tokens) for tokens in chunk], np.int32)


def _score_all(scorer: ThoughtScorer, rows, batch_size: int, length: int) -> list[ThoughtScores]:
    return [
        scorer.score(b, rng=jax.random.PRNGKey(i), lengths=n)
        for i, (b, n) in enumerate(_batches(rows, batch_size, length))
    ]


def answer_rows(
    vocabulary, questions: Sequence[dict], answer_prefix: str
) -> tuple[list[list[int]], list[int]]:
    """(question + prefix + answer tokens, number of answer tokens) per question.

    The answer's tokens are those the full text adds after the prompt's; a question whose
    prompt does not tokenize to a prefix of the full text is rejected with its id.
    """
    rows, answer_lengths = [], []
    for q in questions:
        prompt = f"{q['input']}{answer_prefix}"
        prompt_ids, full = vocabulary.encode(prompt), vocabulary.encode(f"{prompt} {q['label']}")
        if full[: len(prompt_ids)] != prompt_ids or len(full) == len(prompt_ids):
            raise ValueError(
                f"question {q.get('id')}: the answer {q['label']!r} does not tokenize after the "
                f"prompt on its own; change answer_prefix"
            )
        rows.append(full)
        answer_lengths.append(len(full) - len(prompt_ids))
    return rows, answer_lengths


def answer_mass(
    scores: list[ThoughtScores], rows: list[list[int]], answer_lengths: list[int], length: int
) -> dict:
    """Mean p(answer) and mean log p(answer) under the base and mixed predictions."""
    base, mixed = [], []
    flat = [(s, r) for s in scores for r in range(len(s.targets))]
    for (s, r), tokens, n in zip(flat, rows, answer_lengths):
        end = min(len(tokens), length)
        span = slice(max(end - n, 0), end)
        base.append(s.base_logp[r, span].sum())
        mixed.append(s.mixed_logp[r, span].sum())
    base, mixed = np.asarray(base), np.asarray(mixed)
    tokens = sum(answer_lengths)
    return {
        "questions": len(base),
        "answer_tokens": tokens,
        "base_nll_per_token": float(-base.sum() / tokens),
        "mixed_nll_per_token": float(-mixed.sum() / tokens),
        "base_mass": float(np.exp(base).mean()),
        "mixed_mass": float(np.exp(mixed).mean()),
        "base_logp": float(base.mean()),
        "mixed_logp": float(mixed.mean()),
        "mixed_better_fraction": float(np.mean(mixed > base)),
    }


QUESTION_FORMATS = ("teacher", "gsm8k")


def load_questions(
    questions_file: Optional[str],
    num_questions: int,
    questions_format: str = "teacher",
    corpus: str = registry.SYNTHETIC,
) -> list[dict]:
    """Rows with `input` and `label`: from a teacher-JSONL or GSM8K file, else the validation
    questions of the shipped `corpus` (`registry.SYNTHETIC_CORPORA`)."""
    if questions_file is None:
        if corpus not in registry.SYNTHETIC_CORPORA:
            raise ValueError(
                f"evaluate_thoughts.questions_corpus {corpus!r} not in "
                f"{sorted(registry.SYNTHETIC_CORPORA)}"
            )
        return synthetic.generate_split(
            "validation", num_examples=num_questions, difficulty=registry.SYNTHETIC_CORPORA[corpus]
        )
    if questions_format not in QUESTION_FORMATS:
        raise ValueError(f"questions_format {questions_format!r} not in {QUESTION_FORMATS}")
    if questions_format == "gsm8k":
        return sources.read_gsm8k(questions_file).rows[:num_questions]
    return sources.read_rationale_jsonl(questions_file, require_rationales=False).rows[
        :num_questions
    ]


def evaluate_thoughts(
    *,
    model_config=gin.REQUIRED,
    checkpoint_path: str = gin.REQUIRED,
    output_dir: str = gin.REQUIRED,
    mixture_or_task_name: str = "synthetic_arith_text",
    split: str = "validation",
    length: int = 128,
    max_examples: int = 64,
    batch_size: int = 8,
    num_difficulty_bins: int = 4,
    questions_file: Optional[str] = None,
    questions_format: str = "teacher",
    num_questions: int = 64,
    questions_corpus: str = "synthetic_arith",
    answer_prefix: str = " The answer is",
    thinking: ThinkingSpec = ThinkingSpec(),
    thought_temperature: float = 1.0,
    mesh: MeshConfig = MeshConfig(),
    vocabulary_path: Optional[str] = None,
) -> dict:
    """Writes `thought_eval.json` (perplexity by difficulty, answer mass) and returns it.

    Without a `questions_file` the questions are the validation questions of the shipped
    corpus `questions_corpus` (`synthetic_arith`, `synthetic_arith_easy`,
    `synthetic_arith_multistep`).
    `thinking` is the training run's `@ThinkingSpec()`; thoughts are drawn at
    `thought_temperature` (default 1, as the reference's evaluation samples them; 0: argmax)
    and scored on the next token (n_t = 1).
    """
    vocabulary = load_vocabulary(vocabulary_path, model_config)
    check_task(mixture_or_task_name, vocabulary)
    scorer = ThoughtScorer(
        model_config,
        checkpoint_path,
        Partitioner(create_mesh(mesh)),
        spec=dataclasses.replace(thinking, num_talk=1, sample_temperature=thought_temperature),
    )
    texts = [
        ex["targets"]
        for ex in load_examples(mixture_or_task_name, split, max_examples=max_examples)
    ]
    scores = _score_all(scorer, texts, batch_size, length)
    base_nll = np.concatenate([-s.base_logp[s.valid] for s in scores])
    mixed_nll = np.concatenate([-s.mixed_logp[s.valid] for s in scores])
    report = {
        "checkpoint": checkpoint_path,
        "step": scorer.step,
        "task": mixture_or_task_name,
        "split": split,
        "examples": len(texts),
        "perplexity": perplexity_by_difficulty(base_nll, mixed_nll, num_difficulty_bins),
        "mean_mixing_weight": float(
            np.concatenate([s.mixing_weight[s.valid] for s in scores]).mean()
        ),
    }
    rows, answer_lengths = answer_rows(
        vocabulary,
        load_questions(questions_file, num_questions, questions_format, questions_corpus),
        answer_prefix,
    )
    report["answer_mass"] = answer_mass(
        _score_all(scorer, rows, batch_size, length), rows, answer_lengths, length
    )
    report["answer_mass"]["source"] = questions_file or "shipped synthetic validation questions"
    if jax.process_index() == 0:
        os.makedirs(output_dir, exist_ok=True)
        write_text_atomic(
            os.path.join(output_dir, "thought_eval.json"), json.dumps(report, indent=1)
        )
        print(format_report(report), flush=True)
    return report


def format_report(report: dict) -> str:
    """The report as a few readable lines."""
    p = report["perplexity"]
    lines = [
        f"evaluate_thoughts: step {report['step']}, {report['examples']} "
        f"{report['task']}/{report['split']} texts, mean w {report['mean_mixing_weight']:+.3f}",
        f"  all tokens ({p['overall']['tokens']}): ppl base {p['overall']['base_ppl']:.3f}  "
        f"mixed {p['overall']['mixed_ppl']:.3f}",
    ]
    for i, b in enumerate(p["by_difficulty"]):
        lo, hi = b["base_nll_range"]
        lines.append(
            f"  bin {i} (base nll {lo:.2f}..{hi:.2f}, {b['tokens']} tokens): "
            f"ppl base {b['base_ppl']:.3f}  mixed {b['mixed_ppl']:.3f}"
        )
    a = report["answer_mass"]
    lines.extend(
        [
            f"  answer mass on {a['questions']} questions: base {a['base_mass']:.4f}  "
            f"mixed {a['mixed_mass']:.4f}  (mean log p {a['base_logp']:.3f} vs "
            f"{a['mixed_logp']:.3f}; mixed higher on {100 * a['mixed_better_fraction']:.0f}%)",
            f"  answer tokens ({a['answer_tokens']}): nll per token base "
            f"{a['base_nll_per_token']:.3f}  mixed {a['mixed_nll_per_token']:.3f}",
        ]
    )
    return "\n".join(lines)


def main() -> None:
    gin_main(evaluate_thoughts)


if __name__ == "__main__":
    reexec_with_huge_pages()
    main()
