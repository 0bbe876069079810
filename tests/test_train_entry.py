"""train / evaluate / infer end to end on the shipped corpus, resume, and bad input."""

import json
import os

import pytest

from t5x_rationale import train as train_mod
from t5x_rationale.architectures import get_preset
from t5x_rationale.data import registry
from t5x_rationale.data.sources import DataFormatError
from t5x_rationale.data.vocab import get_vocabulary
from t5x_rationale.evaluate import evaluate
from t5x_rationale.infer import infer
from t5x_rationale.inference.decoding import DecodeConfig
from t5x_rationale.runtime.optimizers import OptimizerConfig
from t5x_rationale.runtime.partitioning import MeshConfig

VOCAB = get_vocabulary()
MODEL = get_preset("t5-tiny", vocab_size=-(-VOCAB.vocab_size // 128) * 128)
LENGTHS = {"inputs": 48, "targets": 64}


def _train(run_dir, num_steps, **overrides):
    kwargs = dict(
        model_config=MODEL,
        mixture_or_task_name="synthetic_arith_cot",
        task_feature_lengths=LENGTHS,
        batch_size=8,
        num_steps=num_steps,
        run_dir=str(run_dir),
        mesh=MeshConfig(data=2, fsdp=2, tensor=2),
        optimizer=OptimizerConfig(learning_rate=3e-3),
        save_every=2,
        log_every=1,
        measure_mfu=False,
        console=False,
    )
    kwargs.update(overrides)
    return train_mod.train(**kwargs)


def _metrics(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_train_resume_evaluate_infer(tmp_path):
    run = tmp_path / "run"
    state = _train(run, 3)
    assert int(state.step) == 3
    for name in ("config.gin", "model-info.txt", "metrics.jsonl"):
        assert (run / name).is_file(), name
    assert os.listdir(run / "tensorboard")
    info = (run / "model-info.txt").read_text()
    assert "logical=" in info and "mesh=" in info and "total parameters" in info
    rows = _metrics(run)
    assert [r["step"] for r in rows] == [1, 2, 3]
    for key in (
        "loss",
        "accuracy",
        "grad_norm",
        "learning_rate",
        "data/examples",
        "data/truncated_examples",
    ):
        assert key in rows[0], key

    # A second call resumes at step 3 and appends steps 4..5.
    state = _train(run, 5)
    assert int(state.step) == 5
    assert [r["step"] for r in _metrics(run)] == [1, 2, 3, 4, 5]

    results = evaluate(
        model_config=MODEL,
        mixture_or_task_name="synthetic_arith_cot",
        checkpoint_path=str(run / "checkpoints"),
        input_length=48,
        decode_config=DecodeConfig(max_decode_length=16),
        batch_size=8,
        max_examples=10,
        mesh=MeshConfig(data=2, fsdp=2, tensor=2),
    )
    scores = results["synthetic_arith_cot"]
    assert scores["examples"] == 10 and 0.0 <= scores["answer_accuracy"] <= 100.0
    eval_files = os.listdir(run / "eval")
    assert "synthetic_arith_cot-validation-step5.json" in eval_files
    with open(run / "eval" / "synthetic_arith_cot-validation-step5-predictions.jsonl") as f:
        assert len(f.readlines()) == 10

    questions = tmp_path / "questions.jsonl"
    questions.write_text(
        '{"id": "q1", "input": "Tom has 3 apples and buys 4 more. How many?"}\n'
        '{"input": "What is 2 + 2?"}\n'
    )
    out = tmp_path / "predictions.jsonl"
    rows = infer(
        model_config=MODEL,
        checkpoint_path=str(run / "checkpoints"),
        output_file=str(out),
        input_file=str(questions),
        input_length=48,
        decode_config=DecodeConfig(max_decode_length=8),
        batch_size=8,
        mesh=MeshConfig(data=2, fsdp=2, tensor=2),
    )
    assert [r["id"] for r in rows] == ["q1", "2"]
    assert len(out.read_text().splitlines()) == 2


def test_truncation_is_reported_in_metrics(tmp_path):
    _train(tmp_path / "run", 1, task_feature_lengths={"inputs": 16, "targets": 16})
    (row,) = _metrics(tmp_path / "run")
    assert row["data/truncated_examples"] > 0


def test_malformed_jsonl_names_file_and_line_and_leaves_no_run_dir(tmp_path):
    data = tmp_path / "teacher.jsonl"
    good = {"id": "a", "input": "q?", "label": "1", "rationales": ["r"]}
    data.write_text(
        json.dumps(good) + "\n" + '{"id": "b", "input": "q2", "label": 3, "rationales": ["r"]}\n'
    )
    registry.register_jsonl("bad_teacher", train=str(data))
    run = tmp_path / "run"
    with pytest.raises(DataFormatError, match=r"teacher\.jsonl:2.*label"):
        _train(run, 2, mixture_or_task_name="bad_teacher_cot")
    assert not run.exists()


def test_missing_tokenizer_is_named_and_leaves_no_run_dir(tmp_path):
    run = tmp_path / "run"
    with pytest.raises(FileNotFoundError, match="no_such.model"):
        _train(run, 2, vocabulary_path=str(tmp_path / "no_such.model"))
    assert not run.exists()


def test_unknown_task_suggests_close_names(tmp_path):
    with pytest.raises(ValueError, match="synthetic_arith_cot"):
        _train(tmp_path / "run", 2, mixture_or_task_name="synthetic_arith_cott")
    assert not (tmp_path / "run").exists()


def test_model_vocab_smaller_than_tokenizer_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="vocab_size"):
        _train(tmp_path / "run", 2, model_config=get_preset("t5-tiny"))


USER_TASKS = """
from t5x_rationale.data.registry import register_jsonl

register_jsonl("my_teacher", train="{train}", validation="{validation}")
"""
USER_GIN = """
import my_tasks_module

include 'runs/quickstart.gin'
TASK = 'my_teacher_cot'
RUN_DIR = '{run_dir}'
INPUT_LENGTH = 48
TARGET_LENGTH = 48
model_config.emb_dim = 64
model_config.num_encoder_layers = 1
model_config.num_decoder_layers = 1
train.batch_size = 8
train.num_steps = 2
train.measure_mfu = False
train.console = False
"""


def test_users_jsonl_task_trains_from_a_gin_file(tmp_path, monkeypatch):
    """The README's own-task recipe: a module registers a JSONL file, a gin file imports it."""
    from t5x_rationale import gin_launch

    rows = [
        {
            "id": str(i),
            "input": f"What is {i} + {i}?",
            "label": str(2 * i),
            "rationales": [f"{i} + {i} = {2 * i}.", f"Twice {i} is {2 * i}."],
        }
        for i in range(12)
    ]
    for split in ("train", "validation"):
        (tmp_path / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "my_tasks_module.py").write_text(
        USER_TASKS.format(train=tmp_path / "train.jsonl", validation=tmp_path / "validation.jsonl")
    )
    (tmp_path / "my_run.gin").write_text(USER_GIN.format(run_dir=tmp_path / "run"))
    monkeypatch.syspath_prepend(str(tmp_path))
    state = gin_launch.run(train_mod.train, [f"--gin_file={tmp_path / 'my_run.gin'}"])
    assert int(state.step) == 2
    assert "my_teacher_cot" in (tmp_path / "run" / "config.gin").read_text()


def test_decoder_only_prompted_task_trains_and_evaluates(tmp_path):
    """Decoder-only: prompt + targets in one packed row, loss on targets, prompt fed at decode."""
    decoder = get_preset("decoder-tiny", vocab_size=MODEL.vocab_size)
    run = tmp_path / "run"
    _train(
        run,
        2,
        model_config=decoder,
        mixture_or_task_name="synthetic_arith_cot_decoder",
        task_feature_lengths={"inputs": 48, "targets": 64},
    )
    rows = _metrics(run)
    assert rows[-1]["denominator"] > 0
    results = evaluate(
        model_config=decoder,
        mixture_or_task_name="synthetic_arith_cot_decoder",
        checkpoint_path=str(run / "checkpoints"),
        input_length=49,
        decode_config=DecodeConfig(max_decode_length=8),
        batch_size=8,
        max_examples=4,
        mesh=MeshConfig(data=2, fsdp=2, tensor=2),
    )
    assert results["synthetic_arith_cot_decoder"]["examples"] == 4
