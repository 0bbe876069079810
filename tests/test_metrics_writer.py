"""metrics.jsonl of a resumed run: the rows of replayed steps and a torn row are dropped, so
every step appears once."""

import io
import json

from t5x_rationale.runtime.metrics_writer import MetricsWriter


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_resumed_run_drops_the_rows_it_replays(tmp_path):
    path = tmp_path / "metrics.jsonl"
    rows = [json.dumps({"step": s, "loss": 1.0 / s}) for s in (10, 20, 30, 40, 50)]
    path.write_text("\n".join(rows) + '\n{"step": 60, "lo')  # killed while writing step 60
    writer = MetricsWriter(
        str(tmp_path),
        total_steps=60,
        log_every=10,
        resume_step=30,
        stream=io.StringIO(),
        tensorboard=False,
    )
    for step in range(31, 61):
        writer(step, {"loss": 0.5})
    writer.close()
    steps = [r["step"] for r in _rows(path)]
    assert steps == [10, 20, 30, 40, 50, 60]
    assert [r["loss"] for r in _rows(path)][:3] == [0.1, 0.05, 1.0 / 30]


def test_rows_up_to_the_resumed_step_stay_untouched(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 10, "loss": 1.0}\n')
    MetricsWriter(str(tmp_path), total_steps=20, resume_step=10, tensorboard=False).close()
    assert _rows(path) == [{"step": 10, "loss": 1.0}]
