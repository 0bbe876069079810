"""The benchmark command runs end to end and its numbers are consistent with each other."""

import json

import pytest

from t5x_rationale import bench


def test_bench_runs_and_writes_json(tmp_path, capsys):
    out = tmp_path / "row.json"
    bench.main(["--preset", "t5-tiny", "--batch", "8", "--input_length", "16", "--target_length", "8",
                "--mesh", "2x2x2", "--steps", "2", "--warmup", "0", "--peak_matmul_size", "256",
                "--json", str(out)])
    row = json.loads(out.read_text())
    table = capsys.readouterr().out
    assert "t5-tiny" in table and "mfu" in table
    assert row["mesh"] == "2x2x2" and row["devices"] == 8
    assert row["tokens_per_s"] == pytest.approx(8 * (16 + 8) / row["step_s"])
    assert row["mfu"] == pytest.approx(row["model_gflop_per_step"] / row["step_s"] / row["peak_matmul_gflop_per_s"])
    assert 0 < row["mfu"] <= row["mfu_best_step"]
    assert row["loss"] > 0


def test_bench_rejects_encoder_decoder_without_inputs():
    with pytest.raises(ValueError, match="--input_length"):
        bench.main(["--preset", "t5-tiny", "--target_length", "8", "--steps", "1", "--peak_matmul_size", "64"])


def test_bench_step_by_step_objective(tmp_path):
    out = tmp_path / "row.json"
    bench.main(["--preset", "t5-tiny", "--batch", "8", "--input_length", "16", "--target_length", "16",
                "--steps", "1", "--warmup", "0", "--peak_matmul_size", "64", "--objective", "step_by_step",
                "--json", str(out)])
    row = json.loads(out.read_text())
    assert row["objective"] == "step_by_step" and row["loss"] > 0
