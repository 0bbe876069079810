"""`compare --students` end to end on tiny runs: the table's rows and numbers are `evaluate`'s.

Two students, one seed, 2 steps each, 8 test questions: step-by-step (accuracy from its
`predict:` head, consistency from its rationale head, two `evaluate` calls) and PINTO (the
multiple-choice path, whose accuracy is checked against the loss's own `accuracy` metric).
"""

import json
import os

import jax
import numpy as np
import pytest

import t5x_rationale.data.choice_tasks  # noqa: F401  (registers the `_choices` tasks)
from t5x_rationale import compare
from t5x_rationale.architectures import build_model, get_preset
from t5x_rationale.benchmarks import student_comparison as sc
from t5x_rationale.data.choice_converter import ChoicesConverter
from t5x_rationale.data.pipeline import StreamSpec, TaskStream
from t5x_rationale.objectives.pinto import pinto_loss
from t5x_rationale.runtime.checkpoints import restore_params
from t5x_rationale.runtime.partitioning import MeshConfig, Partitioner, create_mesh
from t5x_rationale.runtime.trainer import abstract_params

# Trains and evaluates real students through subprocesses (about 2 minutes on 2 cores):
# out of the test command to keep it under 25 minutes (`pytest -m extended tests`).
pytestmark = [pytest.mark.slow, pytest.mark.extended]
STEPS, EXAMPLES = 2, 8
CORPUS = "synthetic_arith_multistep"
TINY = dict(
    vocab_size=2048,
    emb_dim=128,
    num_heads=4,
    head_dim=32,
    mlp_dim=512,
    num_encoder_layers=3,
    num_decoder_layers=3,
)


def _evaluated(run_dir: str, task: str) -> dict:
    with open(os.path.join(run_dir, "eval", f"{task}-test-step{STEPS}.json")) as f:
        return json.load(f)


def _pinto_loss_accuracy(run_dir: str) -> float:
    """PINTO's own `accuracy` metric (rng None) on the first test questions, in percent."""
    spec = StreamSpec(
        f"{CORPUS}_choices",
        "test",
        {"inputs": 112, "rationale": 160, "choices": 8},
        EXAMPLES,
        shuffle=False,
        num_epochs=1,
        host_sharding="rows",
    )
    stream = TaskStream(spec, ChoicesConverter(num_choices=4), host_rows=slice(0, EXAMPLES))
    batch = next(stream)
    config = get_preset("t5-tiny", **TINY)  # runs/pinto.gin's student
    with open(os.path.join(run_dir, "model-info.txt")) as f:
        assert f.readline().strip() == f"model: {config}"
    model = build_model(config)
    partitioner = Partitioner(create_mesh(MeshConfig()))
    params, _ = restore_params(
        os.path.join(run_dir, "checkpoints"), abstract_params(model, partitioner, batch)
    )
    with partitioner.context():
        _, metrics = pinto_loss(model, params, jax.tree.map(np.asarray, batch), None)
    return 100.0 * float(metrics["accuracy"])


def test_students_table_holds_what_evaluate_wrote(tmp_path, monkeypatch):
    # the runs see this machine's one CPU device, not the 8 simulated ones of the tests
    flags = os.environ.get("XLA_FLAGS", "").split()
    kept = [f for f in flags if not f.startswith("--xla_force_host_platform_device_count")]
    monkeypatch.setenv("XLA_FLAGS", " ".join(kept))
    out = str(tmp_path / "students")
    text = compare.main(
        [
            "--students=step-by-step,pinto",
            f"--steps={STEPS}",
            "--batch=8",
            "--seeds=0",
            f"--out_dir={out}",
            f"--eval_examples={EXAMPLES}",
            "--jobs=2",
        ]
    )
    with open(os.path.join(out, "students.json")) as f:
        written = json.load(f)
    runs = {r["key"]: r for r in written["runs"]}
    assert set(runs) == {"step-by-step", "pinto"}
    assert written["steps"] == STEPS and written["batch"] == 8

    sbs_dir = os.path.join(out, "step-by-step-seed0")
    label = _evaluated(sbs_dir, f"{CORPUS}_label")
    rationale = _evaluated(sbs_dir, f"{CORPUS}_rationale")
    assert label["examples"] == EXAMPLES
    assert runs["step-by-step"]["accuracy"] == label["answer_accuracy"]
    assert rationale["counterfactual_consistency"] is not None
    assert runs["step-by-step"]["consistency"] == rationale["counterfactual_consistency"]

    pinto_dir = os.path.join(out, "pinto-seed0")
    choices = _evaluated(pinto_dir, f"{CORPUS}_choices")
    assert choices["examples"] == EXAMPLES and choices["counterfactual_consistency"] is None
    assert runs["pinto"]["accuracy"] == choices["choice_accuracy"]
    assert runs["pinto"]["consistency"] is None
    assert choices["choice_accuracy"] == pytest.approx(_pinto_loss_accuracy(pinto_dir))

    rows = [line for line in text.splitlines() if line.startswith("| ") and "---" not in line]
    assert [r.split("|")[1].strip() for r in rows[1:]] == ["step-by-step", "PINTO (4 choices)"]
    sbs_row, pinto_row = rows[1], rows[2]
    assert f"{label['answer_accuracy']:.1f}" in sbs_row.split("|")[2]
    assert f"{rationale['counterfactual_consistency']:.1f}" in sbs_row.split("|")[3]
    assert f"{choices['choice_accuracy']:.1f}" in pinto_row.split("|")[2]
    assert pinto_row.split("|")[3].strip() == "n/a"
    with open(os.path.join(out, "students.md")) as f:
        assert f.read() == text


def test_parse_students_orders_and_rejects():
    assert sc.parse_students("pinto,label-only") == ["label-only", "pinto"]
    assert sc.parse_students("all") == list(sc.STUDENTS)
    with pytest.raises(ValueError, match="unknown students"):
        sc.parse_students("label-only,kd")
