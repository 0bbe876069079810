"""The teacher JSONL that annotation writes loads through `register_jsonl` and trains a student."""

import json
import math

from test_annotate import MODEL, QUESTIONS, _generations

from t5x_rationale import train as train_mod
from t5x_rationale.data import registry
from t5x_rationale.data.annotation import teacher_jsonl_text, teacher_rows
from t5x_rationale.data.teacher_jsonl import read_rationale_jsonl
from t5x_rationale.runtime.optimizers import OptimizerConfig
from t5x_rationale.runtime.partitioning import MeshConfig


def test_written_teacher_jsonl_trains_a_student(tmp_path):
    rows, _ = teacher_rows(QUESTIONS, _generations())
    (tmp_path / "teacher.jsonl").write_text(teacher_jsonl_text(rows))
    read = read_rationale_jsonl(tmp_path / "teacher.jsonl").rows
    assert [(r["id"], r["rationales"], r["negatives"]) for r in read] == [
        (r["id"], r["rationales"], r["negatives"]) for r in rows
    ]
    names = registry.register_jsonl("annotate_test", train=str(tmp_path / "teacher.jsonl"))
    state = train_mod.train(
        model_config=MODEL,
        mixture_or_task_name=names.cot,
        task_feature_lengths={"inputs": 32, "targets": 32},
        batch_size=8,
        num_steps=2,
        run_dir=str(tmp_path / "run"),
        mesh=MeshConfig(),
        optimizer=OptimizerConfig(learning_rate=3e-3),
        save_every=2,
        log_every=1,
        measure_mfu=False,
        console=False,
    )
    assert int(state.step) == 2
    metrics = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    losses = [json.loads(line)["loss"] for line in metrics]
    assert len(losses) == 2 and all(math.isfinite(loss) for loss in losses)
