"""The accelerator check: its CPU half runs end to end and passes, and every check can fail."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from t5x_rationale.benchmarks import accelerator_checks as checks
from t5x_rationale.benchmarks import accelerator_report as report_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.extended  # 75-135 s; the checks' own tests below run in CI
def test_cpu_half_writes_a_passing_report(tmp_path):
    out = tmp_path / "report.json"
    cmd = [sys.executable, "-m", "t5x_rationale.accelerator_check", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-5000:]
    report = json.loads(out.read_text())
    assert report["backend"] == "cpu" and report["plan"] == "tiny"
    assert report["device_count"] == 8 and report["device_kind"]
    assert report["jax_version"] and report["jaxlib_version"]
    assert report["complete"] and report["passed"] and report["failures"] == []
    assert 0 < report["wall_s"] < report["budget_s"]

    by_kind = {}
    for entry in report["checks"]:
        by_kind.setdefault(entry["name"].split("/")[0], []).append(entry)
    assert set(by_kind) == {"bf16_vs_f32", "attention_cudnn_vs_xla", "sharded_vs_one_device"}
    assert {e["name"] for e in by_kind["attention_cudnn_vs_xla"]} == {
        f"attention_cudnn_vs_xla/{case}" for case in checks.ATTENTION_CASES
    }
    for entry in report["checks"]:
        if entry["name"].startswith("attention_cudnn_vs_xla/"):
            # the only check allowed to skip on CPU, and the skip is on record
            assert entry["passed"] is None and entry["skipped"] == "cudnn needs a GPU"
        else:
            assert entry["passed"] is True, entry
            assert 0 <= entry["error"] <= entry["tolerance"]
            assert entry["max_abs_error"] >= 0 and entry["scale"] > 0
    assert {e["name"].split("/")[1] for e in by_kind["bf16_vs_f32"]} == {"decoder-tiny", "t5-tiny"}
    assert all(e["devices"] == 8 for e in by_kind["sharded_vs_one_device"])

    benches = report["benches"]
    assert [(b["preset"], b["objective"]) for b in benches] == [
        ("decoder-tiny", "token"),
        ("t5-tiny", "token"),
        ("decoder-tiny", "quiet_star/streams"),
    ]
    for row in benches:
        assert row["dtype"] == "bfloat16" and row["backend"] == "cpu"
        assert row["tokens_per_s"] > 0 and 0 < row["mfu"] and 0 < row["mfu_bf16_peak"]
        assert row["loss"] > 0


def test_compare_passes_within_and_fails_outside_the_tolerance():
    want = {"a": np.linspace(-2.0, 2.0, 9), "b": np.full(3, 10.0)}
    near = {"a": want["a"] + 1e-3, "b": want["b"]}
    entry = checks.compare("x", near, want, tolerance=1e-3)
    assert entry["passed"] and entry["error"] == pytest.approx(5e-4)
    assert entry["max_abs_error"] == pytest.approx(1e-3) and entry["scale"] == 2.0
    # the same difference against a zero tolerance, a perturbed output, a NaN
    assert not checks.compare("x", near, want, tolerance=0.0)["passed"]
    far = {"a": want["a"], "b": want["b"] + 1.0}
    entry = checks.compare("x", far, want, tolerance=1e-3)
    assert not entry["passed"] and entry["error"] == pytest.approx(0.1)
    broken = {"a": np.where(want["a"] > 1, np.nan, want["a"]), "b": want["b"]}
    assert not checks.compare("x", broken, want, tolerance=1.0)["passed"]
    # a low-precision result identical to the reference is a failure when asked
    assert checks.compare("x", want, want, tolerance=1.0)["passed"]
    assert not checks.compare("x", want, want, tolerance=1.0, must_differ=True)["passed"]


def test_bf16_check_fails_on_a_wrong_candidate():
    """A bf16 result off by 1 (the logits' max is about 4) fails both comparisons; that a
    correct bf16 result passes is the report test's."""
    loss, logits = checks.bf16_vs_f32("decoder-tiny", batch_size=8, target_length=16, perturb=1.0)
    assert not loss["passed"] and loss["error"] > loss["tolerance"]
    assert not logits["passed"] and logits["error"] > logits["tolerance"]


@pytest.mark.parametrize("case", checks.ATTENTION_CASES)
def test_attention_check_compares_and_can_fail(case):
    """On CPU the check runs XLA against itself: equal, then a perturbed candidate fails."""
    same = checks.attention_agreement(case, candidate="xla", length=64)
    assert [e["passed"] for e in same] == [True, True]
    assert all(e["error"] == 0 for e in same)
    wrong = checks.attention_agreement(case, candidate="xla", length=64, perturb=0.1)
    assert [e["passed"] for e in wrong] == [False, False]
    assert all("cudnn_kernel_in_program" not in e for e in wrong)


def test_attention_check_on_cpu_refuses_cudnn():
    with pytest.raises(ValueError, match="cudnn attention needs a GPU"):
        checks.attention_agreement("causal_gqa", length=64)


def test_sharded_check_fails_on_a_perturbed_step():
    loss, params = checks.sharded_vs_one_device("decoder-tiny", target_length=16, perturb=1e-4)
    assert loss["passed"] and not params["passed"]
    assert params["devices"] == 8 and params["mesh"] == "2x4x1"
    assert params["max_abs_error"] == pytest.approx(1e-4, rel=1e-2)


@pytest.mark.parametrize("n, mesh", [(1, (1, 1)), (2, (1, 2)), (3, (1, 3)), (8, (2, 4))])
def test_sharded_mesh_spans_every_device(n, mesh):
    config = checks._mesh_over(list(range(n)))
    assert (config.data, config.fsdp, config.tensor) == (*mesh, 1)


def test_bench_batch_fits_the_devices():
    flags = ("--preset", "decoder-1b", "--batch", "4", "--target_length", "8")
    assert report_lib._fit_batch(flags, 1)[3] == "4"
    assert report_lib._fit_batch(flags, 8)[3] == "8"
    assert report_lib._fit_batch(flags, 3)[3] == "6"


def test_a_failed_bench_is_recorded():
    env = dict(os.environ, T5XR_HUGE_PAGES="0")
    row = report_lib.run_bench(["--preset", "no-such-preset"], timeout_s=120, env=env)
    assert "exit code 1" in row["error"] and "no-such-preset" in row["error"]
    row = report_lib.run_bench(["--preset", "decoder-tiny"], timeout_s=0, env=env)
    assert row["error"] == "not run: the time budget was spent"
    report = {"checks": [{"name": "c", "passed": False}], "benches": [row]}
    assert report_lib.failures(report) == ["c", "bench --preset decoder-tiny"]
