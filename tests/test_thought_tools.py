"""Quiet-STaR tools end to end: train a tiny run from its gin file, inspect it, evaluate it."""

import json

import numpy as np
import pytest

from t5x_rationale.data import registry, synthetic
from t5x_rationale.data.vocab import get_vocabulary
from t5x_rationale.evaluate_thoughts import (
    answer_mass,
    answer_rows,
    evaluate_thoughts,
    load_questions,
    perplexity_by_difficulty,
)
from t5x_rationale.gin_launch import run
from t5x_rationale.infer import infer
from t5x_rationale.inference.thought_scoring import ThoughtScores
from t5x_rationale.inspect_thoughts import inspect_thoughts
from t5x_rationale.train import train

N_A = 5  # small thoughts keep the run short; every step kind is still there
TINY = ["--gin_file=models/quiet_star_tiny.gin"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("quiet_star")
    run(
        train,
        [
            "--gin_file=runs/quiet_star.gin",
            f"--gin.RUN_DIR='{run_dir}'",
            "--gin.TRAIN_STEPS=2",
            "--gin.LENGTH=32",
            "--gin.train.save_every=2",
            "--gin.train.log_every=1",
            "--gin.OptimizerConfig.warmup_steps=1",
            f"--gin.ThinkingSpec.num_ahead={N_A}",
            "--gin.ThinkingSpec.num_talk=2",
            "--gin.train.console=False",
        ],
    )
    return run_dir


def test_quiet_star_run_logs_thinking_flops(checkpoint):
    rows = [json.loads(line) for line in (checkpoint / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    for key in ("loss", "base_ce", "mixed_ce_next", "mixing_weight", "model_tflops_per_s"):
        assert key in rows[-1], key
    assert rows[-1]["model_tflops_per_s"] > 0


def test_inspect_writes_html_png_and_consistent_numbers(checkpoint, tmp_path):
    text = "Tom has 3 boxes of 4 pens. The answer is 12."
    rows = run(
        inspect_thoughts,
        TINY
        + [
            "--gin_file=runs/inspect_thoughts.gin",
            f"--gin.CHECKPOINT_PATH='{checkpoint}/checkpoints'",
            f"--gin.OUTPUT_DIR='{tmp_path}'",
            f"--gin.inspect_thoughts.text='{text}'",
            f"--gin.ThinkingSpec.num_ahead={N_A}",
            "--gin.ThinkingSpec.num_talk=2",
        ],
    )
    vocab = get_vocabulary()
    assert [r["token_id"] for r in rows] == vocab.encode(text)
    assert "".join(r["token"] for r in rows).strip() == text
    page = (tmp_path / "thoughts.html").read_text()
    for r in rows:
        assert len(r["thought_ids"]) == N_A - 3
        assert not set(r["thought_ids"]) & {3, 4}  # the thought ids are never sampled
        assert r["delta_next"] == pytest.approx(r["mixed_logp"] - r["base_logp"], abs=1e-6)
        assert f"{r['delta_future']:+.3f}" in page
    assert (tmp_path / "thoughts.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((tmp_path / "thoughts.json").read_text()) == rows

    report = run(
        evaluate_thoughts,
        TINY
        + [
            "--gin_file=runs/evaluate_thoughts.gin",
            f"--gin.CHECKPOINT_PATH='{checkpoint}/checkpoints'",
            f"--gin.OUTPUT_DIR='{tmp_path}'",
            f"--gin.ThinkingSpec.num_ahead={N_A}",
            "--gin.evaluate_thoughts.max_examples=4",
            "--gin.evaluate_thoughts.num_questions=4",
            "--gin.evaluate_thoughts.length=64",
            "--gin.evaluate_thoughts.batch_size=4",
        ],
    )
    assert (
        report["step"] == 2 and report["examples"] == 4 and report["answer_mass"]["questions"] == 4
    )
    overall = report["perplexity"]["overall"]
    assert sum(b["tokens"] for b in report["perplexity"]["by_difficulty"]) == overall["tokens"]
    assert json.loads((tmp_path / "thought_eval.json").read_text()) == report


def test_perplexity_by_difficulty_matches_a_hand_computation():
    base = np.array([0.1, 0.2, 3.0, 4.0, 0.5, 2.0, 1.0, 6.0])
    mixed = np.array([0.2, 0.1, 2.0, 3.0, 0.5, 2.5, 1.0, 4.0])
    out = perplexity_by_difficulty(base, mixed, num_bins=2)
    easy, hard = [0, 1, 4, 6], [2, 3, 5, 7]  # base NLL below / above the median 1.5
    assert [b["tokens"] for b in out["by_difficulty"]] == [4, 4]
    assert out["by_difficulty"][0]["base_ppl"] == pytest.approx(np.exp(np.mean(base[easy])))
    assert out["by_difficulty"][1]["mixed_ppl"] == pytest.approx(np.exp(np.mean(mixed[hard])))
    assert out["overall"]["mixed_ppl"] == pytest.approx(np.exp(mixed.mean()))


def test_answer_mass_sums_the_answer_tokens_only():
    vocab = get_vocabulary()
    questions = synthetic.generate_split("validation", num_examples=2)
    rows, lengths = answer_rows(vocab, questions, " The answer is")
    for q, tokens, n in zip(questions, rows, lengths):
        assert vocab.decode(tokens[-n:]).strip() == q["label"]
    width = max(map(len, rows))
    targets = np.zeros((2, width), np.int32)
    rng = np.random.default_rng(0)
    base, mixed = -rng.random((2, width)), -rng.random((2, width))
    for r, tokens in enumerate(rows):
        targets[r, : len(tokens)] = tokens
    scores = ThoughtScores(
        targets,
        targets > 0,
        base,
        mixed,
        np.zeros((2, width)),
        np.zeros((2, width, 2), int),
        np.zeros((2, width)),
    )
    out = answer_mass([scores], rows, lengths, length=width)
    want_base = [base[r, len(t) - n : len(t)].sum() for r, (t, n) in enumerate(zip(rows, lengths))]
    assert out["base_mass"] == pytest.approx(np.mean(np.exp(want_base)))
    assert out["base_logp"] == pytest.approx(np.mean(want_base))
    assert out["answer_tokens"] == sum(lengths)
    assert out["base_nll_per_token"] == pytest.approx(-np.sum(want_base) / sum(lengths))
    want_mixed = [
        mixed[r, len(t) - n : len(t)].sum() for r, (t, n) in enumerate(zip(rows, lengths))
    ]
    assert out["mixed_nll_per_token"] == pytest.approx(-np.sum(want_mixed) / sum(lengths))


def test_questions_come_from_the_named_corpus():
    multistep = load_questions(None, 3, corpus="synthetic_arith_multistep")
    want = synthetic.generate_split(
        "validation", num_examples=3, difficulty=registry.MULTISTEP_DIFFICULTY
    )
    assert multistep == want and multistep != load_questions(None, 3)
    with pytest.raises(ValueError, match="questions_corpus 'nope'"):
        load_questions(None, 3, corpus="nope")


def test_infer_generates_with_thoughts(checkpoint, tmp_path):
    questions = tmp_path / "questions.jsonl"
    questions.write_text(
        '{"id": "q1", "input": "Tom has 3 apples and buys 4 more."}\n{"input": "What is 2 + 2?"}\n'
    )
    out = tmp_path / "predictions.jsonl"
    rows = run(
        infer,
        TINY
        + [
            "--gin_file=runs/infer.gin",
            f"--gin.CHECKPOINT_PATH='{checkpoint}/checkpoints'",
            "--gin.infer.model_config=@quiet_star_config()",
            "--gin.infer.thoughts=@ThoughtDecodeConfig()",
            "--gin.ThoughtDecodeConfig.thinking=@ThinkingSpec()",
            f"--gin.ThinkingSpec.num_ahead={N_A}",
            f"--gin.infer.input_file='{questions}'",
            f"--gin.infer.output_file='{out}'",
            "--gin.INPUT_LENGTH=32",
            "--gin.TARGET_LENGTH=6",
            "--gin.infer.batch_size=8",
        ],
    )
    assert [r["id"] for r in rows] == ["q1", "2"]
    assert all(isinstance(r["prediction"], str) for r in rows)
    assert len(out.read_text().splitlines()) == 2


def test_scored_rows_take_their_lengths_so_a_final_id_zero_counts():
    """Rows are scored with the weights of their lengths (id 0 as a text token may end one);
    the scoring function itself is stood in for: it returns the weights it was given."""
    import jax

    from t5x_rationale.inference.thought_scoring import ThoughtScorer
    from t5x_rationale.runtime.partitioning import MeshConfig, Partitioner, create_mesh

    scorer = ThoughtScorer.__new__(ThoughtScorer)
    scorer.partitioner = Partitioner(create_mesh(MeshConfig(), jax.devices()[:1]))
    scorer.params = None
    fields = ("base_logp", "mixed_logp", "mixing_weight", "thoughts", "delta_future")
    scorer._score = lambda params, targets, weights, rng: {k: weights for k in fields}
    rows = np.array([[5, 6, 0, 0], [7, 0, 8, 0]], np.int32)
    scores = scorer.score(rows, lengths=[3, 3])
    want = np.array([[1, 1, 1, 0], [1, 1, 1, 0]], bool)
    np.testing.assert_array_equal(scores.valid, want)
    np.testing.assert_array_equal(scores.base_logp, want.astype(np.int32))
    inferred = scorer.score(rows)  # by default a row ends at its last non-zero token
    np.testing.assert_array_equal(inferred.valid, [[1, 1, 0, 0], [1, 1, 1, 0]])
