"""The shipped GSM8K distillation runs start, train a few steps and evaluate on real GSM8K.

Each `configs/runs/gsm8k_*.gin` file is launched as a user would (`gin_launch.run`), with
only the size shrunk for this CPU (a tiny T5, batch 8, 2 steps, 64-token inputs and
targets, 8 test questions, a short decode cap); tasks, objectives, converters and the
reader are the shipped ones.
Skips when `../shared/data/gsm8k` is absent.
"""

import json

import gin
import pytest
from test_sources import gsm8k_dir

from t5x_rationale import gin_launch
from t5x_rationale.data import registry
from t5x_rationale.evaluate import evaluate
from t5x_rationale.train import train

TINY = [
    "model_config.preset = 't5-tiny'",
    "model_config.vocab_size = 2048",
    "TRAIN_STEPS = 2",
    "INPUT_LENGTH = 64",  # longer questions are cut and counted (data/truncated_examples)
    "TARGET_LENGTH = 64",
    "OptimizerConfig.warmup_steps = 1",
    "BATCH_SIZE = 8",
    "train.save_every = 2",
    "train.log_every = 1",
    "train.measure_mfu = False",
    "train.console = False",
    "evaluate.max_examples = 8",
    "evaluate.batch_size = 8",
    "DecodeConfig.max_decode_length = 8",
]
TINY_DISCRIMINATOR = [
    "discriminator_model.preset = 't5-tiny'",
    "discriminator_model.vocab_size = 2048",
    "QcrdSettings.sample_every = 2",
]
TINY_TEACHER = ["teacher/model_config.preset = 't5-tiny'", "teacher/model_config.vocab_size = 2048"]


def _launch(entry, run_file, run_dir, extra=()):
    argv = [
        f"--gin_file=runs/{run_file}",
        f"--gin.GSM8K_DIR='{gsm8k_dir()}'",
        f"--gin.RUN_DIR='{run_dir}'",
    ]
    argv += [f"--gin.{b.replace(' = ', '=', 1)}" for b in TINY + list(extra)]
    try:
        return gin_launch.run(entry, argv)
    finally:
        gin.clear_config()


def _train_and_evaluate(run_file, run_dir, eval_task, metric_keys, extra=()):
    state = _launch(train, run_file, run_dir, extra)
    assert int(state.step) == 2
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    for key in metric_keys:
        assert key in rows[-1], (run_file, key, sorted(rows[-1]))
    results = _launch(evaluate, run_file, run_dir, extra)
    scores = results[eval_task]
    assert scores["examples"] == 8 and 0.0 <= scores["answer_accuracy"] <= 100.0
    assert (run_dir / "eval" / f"{eval_task}-test-step2.json").is_file()


@pytest.mark.slow
def test_gsm8k_distillation_runs_train_and_evaluate(tmp_path):
    # label-only is step-by-step's own code with alpha = 1 (tests/test_gin_configs.py reads it)
    _train_and_evaluate(
        "gsm8k_step_by_step.gin",
        tmp_path / "sbs",
        "gsm8k_label",
        ["label_loss", "rationale_loss", "label_token_fraction"],
    )
    # gsm8k_cot.gin is the KD run's task and loss without a teacher: the KD run below trains
    # and evaluates it, with the step-by-step run's checkpoint as its (tiny) teacher
    _train_and_evaluate(
        "gsm8k_kd.gin",
        tmp_path / "kd",
        "gsm8k_cot",
        ["kl", "teacher_accuracy"],
        extra=TINY_TEACHER + [f"TEACHER_CHECKPOINT = '{tmp_path / 'sbs' / 'checkpoints'}'"],
    )
    # QCRD: GSM8K's rationale as the positive, the student's own wrong samples as negatives
    _train_and_evaluate(
        "gsm8k_qcrd.gin",
        tmp_path / "qcrd",
        "gsm8k_label",
        ["positive_term", "self_adversarial/kept", "discriminator/updated"],
        extra=TINY_DISCRIMINATOR,
    )


def test_unknown_task_kind_is_named(tmp_path):
    with pytest.raises(ValueError, match="'cott'.*'cot'"):
        registry.gsm8k_task_name("cott", data_dir=str(tmp_path))
