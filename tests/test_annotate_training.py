"""The teacher JSONL that annotation writes loads through `register_jsonl` and trains a student
(a few steps of the CoT task it registers, on one device)."""

import math

import jax
import optax
from test_annotate import MODEL, QUESTIONS, _generations

from t5x_rationale.architectures import build_model
from t5x_rationale.data import registry
from t5x_rationale.data.annotation import teacher_jsonl_text, teacher_rows
from t5x_rationale.data.pipeline import StreamSpec, TaskStream
from t5x_rationale.data.run_inputs import default_converter
from t5x_rationale.data.teacher_jsonl import read_rationale_jsonl
from t5x_rationale.objectives import token_loss
from t5x_rationale.runtime.partitioning import MeshConfig, Partitioner, create_mesh
from t5x_rationale.runtime.trainer import Trainer


def test_written_teacher_jsonl_trains_a_student(tmp_path):
    rows, _ = teacher_rows(QUESTIONS, _generations())
    (tmp_path / "teacher.jsonl").write_text(teacher_jsonl_text(rows))
    read = read_rationale_jsonl(tmp_path / "teacher.jsonl").rows
    assert [(r["id"], r["rationales"], r["negatives"]) for r in read] == [
        (r["id"], r["rationales"], r["negatives"]) for r in rows
    ]
    names = registry.register_jsonl("annotate_test", train=str(tmp_path / "teacher.jsonl"))
    spec = StreamSpec(names.cot, "train", {"inputs": 32, "targets": 32}, batch_size=4)
    stream = TaskStream(spec, default_converter(MODEL.architecture), host_rows=slice(0, 4))
    partitioner = Partitioner(create_mesh(MeshConfig(1, 1, 1), jax.devices()[:1]))
    trainer = Trainer(build_model(MODEL), token_loss, optax.adam(3e-3), partitioner)
    batch = next(stream)
    assert batch["decoder_target_tokens"].shape == (4, 32)
    state = trainer.init_state(0, batch)
    losses = []
    for _ in range(3):
        state, metrics = trainer.train_step(state, partitioner.host_batch_to_global(batch))
        losses.append(float(metrics["loss"]))
    assert all(math.isfinite(loss) for loss in losses) and losses[-1] < losses[0]
