"""The benchmark command runs end to end and its numbers are consistent with each other."""

import json

import numpy as np
import pytest

from t5x_rationale import bench
from t5x_rationale.architectures import QuietStarConfig, get_preset
from t5x_rationale.runtime.flops import qcrd_step_counts, quiet_star_forward_flops


def test_bench_runs_and_writes_json(tmp_path, capsys):
    out = tmp_path / "row.json"
    bench.main(
        [
            "--preset",
            "t5-tiny",
            "--batch",
            "8",
            "--input_length",
            "16",
            "--target_length",
            "8",
            "--mesh",
            "2x2x2",
            "--steps",
            "2",
            "--warmup",
            "0",
            "--peak_matmul_size",
            "256",
            "--json",
            str(out),
        ]
    )
    row = json.loads(out.read_text())
    table = capsys.readouterr().out
    assert "t5-tiny" in table and "mfu" in table
    assert row["mesh"] == "2x2x2" and row["devices"] == 8
    assert row["tokens_per_s"] == pytest.approx(8 * (16 + 8) / row["step_s"])
    assert row["mfu"] == pytest.approx(
        row["model_gflop_per_step"] / row["step_s"] / row["peak_matmul_gflop_per_s"]
    )
    assert 0 < row["mfu"] <= row["mfu_best_step"]
    assert row["loss"] > 0


def test_bench_rejects_encoder_decoder_without_inputs():
    with pytest.raises(ValueError, match="--input_length"):
        bench.main(
            [
                "--preset",
                "t5-tiny",
                "--target_length",
                "8",
                "--steps",
                "1",
                "--peak_matmul_size",
                "64",
            ]
        )


def test_bench_step_by_step_objective(tmp_path):
    out = tmp_path / "row.json"
    bench.main(
        [
            "--preset",
            "t5-tiny",
            "--batch",
            "8",
            "--input_length",
            "16",
            "--target_length",
            "16",
            "--steps",
            "1",
            "--warmup",
            "0",
            "--peak_matmul_size",
            "64",
            "--objective",
            "step_by_step",
            "--json",
            str(out),
        ]
    )
    row = json.loads(out.read_text())
    assert row["objective"] == "step_by_step" and row["loss"] > 0


def test_bench_quiet_star_counts_decomposition_flops_for_both_implementations(tmp_path):
    rows = {}
    for impl in ("streams", "dense_mask"):
        out = tmp_path / f"{impl}.json"
        bench.main(
            [
                "--preset",
                "decoder-tiny",
                "--batch",
                "8",
                "--target_length",
                "16",
                "--steps",
                "1",
                "--warmup",
                "0",
                "--peak_matmul_size",
                "64",
                "--objective",
                "quiet_star",
                "--num_ahead",
                "5",
                "--num_talk",
                "2",
                "--implementation",
                impl,
                "--json",
                str(out),
            ]
        )
        rows[impl] = json.loads(out.read_text())
    config = QuietStarConfig(get_preset("decoder-tiny"))
    want = (
        3 * quiet_star_forward_flops(config, 8, 16, num_ahead=5, num_talk=2, num_thoughts=2) / 1e9
    )
    for impl, row in rows.items():
        assert row["objective"] == f"quiet_star/{impl}"
        assert row["model_gflop_per_step"] == pytest.approx(want)
    # Same batch, same sampling key: the two implementations compute the same loss.
    assert rows["streams"]["loss"] == pytest.approx(rows["dense_mask"]["loss"], rel=1e-5)


def test_bench_compile_only_reports_memory(tmp_path):
    out = tmp_path / "row.json"
    bench.main(
        [
            "--preset",
            "decoder-tiny",
            "--batch",
            "8",
            "--target_length",
            "16",
            "--objective",
            "quiet_star",
            "--num_ahead",
            "5",
            "--num_talk",
            "2",
            "--compile_only",
            "--peak_matmul_size",
            "64",
            "--json",
            str(out),
        ]
    )
    row = json.loads(out.read_text())
    assert row["compiled_total_gib"] > 0 and "step_s" not in row
    parts = [row[f"compiled_{p}_gib"] for p in ("argument", "output", "temp", "alias")]
    assert row["compiled_total_gib"] == pytest.approx(parts[0] + parts[1] + parts[2] - parts[3])
    # the argument holds the whole state (replicated here): float32 params and two AdamW moments
    assert row["compiled_argument_gib"] * 2**30 >= 3 * 4 * row["params_m"] * 1e6


def test_bench_dense_mask_by_parts_adds_up_every_step(tmp_path):
    out = tmp_path / "row.json"
    bench.main(
        [
            "--preset",
            "decoder-tiny",
            "--batch",
            "8",
            "--target_length",
            "16",
            "--objective",
            "quiet_star",
            "--implementation",
            "dense_mask",
            "--num_ahead",
            "5",
            "--num_talk",
            "2",
            "--microbatches",
            "2",
            "--by_parts",
            "--steps",
            "1",
            "--peak_matmul_size",
            "64",
            "--json",
            str(out),
        ]
    )
    row = json.loads(out.read_text())
    parts = row["parts_s"]
    steps = 5 + 2 - 2
    assert set(parts) == {"context", "optimizer"} | {
        f"{kind}_{k}" for kind in ("layer", "head") for k in range(1, steps + 1)
    }
    layers = get_preset("decoder-tiny").num_layers
    per_microbatch = parts["context"] + sum(
        layers * parts[f"layer_{k}"] + parts[f"head_{k}"] for k in range(1, steps + 1)
    )
    assert row["step_s"] == pytest.approx(2 * per_microbatch + parts["optimizer"])
    assert row["mfu"] == pytest.approx(
        row["model_gflop_per_step"] / row["step_s"] / row["peak_matmul_gflop_per_s"]
    )


@pytest.mark.parametrize("flags", [["--implementation", "streams"], ["--objective", "token"]])
def test_bench_by_parts_rejects_what_it_does_not_time(flags):
    with pytest.raises(ValueError, match="--by_parts"):
        bench.main(
            [
                "--preset",
                "decoder-tiny",
                "--batch",
                "8",
                "--target_length",
                "16",
                "--objective",
                "quiet_star",
                "--implementation",
                "dense_mask",
                "--by_parts",
                "--steps",
                "1",
                "--peak_matmul_size",
                "64",
            ]
            + flags
        )


def test_bench_qcrd_reports_the_step_and_the_amortised_sampler_and_discriminator(tmp_path):
    out = tmp_path / "row.json"
    flags = "--preset t5-tiny --batch 8 --input_length 16 --target_length 8 --steps 1"
    flags += " --peak_matmul_size 64 --objective qcrd --candidates 4 --num_samples 2"
    flags += " --sample_every 5 --discriminator_every 4"
    bench.main(flags.split() + ["--json", str(out)])
    row = json.loads(out.read_text())
    shapes = {  # 8 label rows 16 -> 8, 8 questions of 16 with 4 slots of 8 (2 sampled)
        "encoder_input_tokens": np.zeros((8, 16)),
        "decoder_target_tokens": np.zeros((8, 8)),
        "candidate_encoder_input_tokens": np.zeros((8, 16)),
        "candidate_target_tokens": np.zeros((8, 4, 8)),
    }
    tokens, flops = qcrd_step_counts(get_preset("t5-tiny"), shapes)
    assert row["model_gflop_per_step"] == pytest.approx(flops / 1e9)
    assert row["tokens_per_s"] == pytest.approx(tokens / row["step_s"])
    assert row["amortised_sampler_s_per_step"] == pytest.approx(row["sampler_s_per_call"] / 5)
    assert row["amortised_discriminator_s_per_step"] == pytest.approx(
        row["discriminator_s_per_update"] / 4
    )
    assert row["loss"] > 0 and 0 < row["mfu"]
