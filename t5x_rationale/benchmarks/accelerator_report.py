"""The accelerator check's plan and report: which checks and benches run at which sizes, the
benches as `python -m t5x_rationale.bench` subprocesses, and one JSON report, rewritten
after every check and bench so a crash still leaves what ran.

Order: a subprocess reports the backend and devices, the benches run in subprocesses, and
only then does this process touch the device, for the checks. A TPU admits one process at a
time, and on a GPU this process would otherwise hold memory the benches need.

Two plans. `ACCELERATOR` (a GPU or TPU): bf16 against f32 on decoder-125m and t5-small,
cuDNN against XLA attention, the sharded step on tiny models, and benches of decoder-1b and
t5-base in bf16 and the Quiet-STaR streams step on decoder-125m at 256 tokens. `TINY` (CPU,
or `--quick` anywhere): the same checks and benches on the tiny presets, two timed steps.

Budget of the accelerator plan on one H100, 8 minutes (an estimate: no GPU has run it yet).
Compile times measured on the 2-core CPU: the decoder-1b step 15 s, t5-base 22 s, the
Quiet-STaR streams step 43 s with scanned layers (99 s without, hence `--scan_layers`); a
GPU compile with autotuning takes about as long or up to twice that, and a step 0.05-0.5 s.
Each bench: 15 s to start a process, 20 s to initialise and measure the peak, 15-90 s to
compile, 10 s of steps; 3-6 min for the three, plus the probe (15 s) and the checks (about
1.5 min): 4.5-7.5 min in all. Benches must end `checks_reserve_s` before `budget_s`: one
still running then is stopped and reported as failed, and the checks still run.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from typing import Callable, Iterator

import jax
import jax.numpy as jnp

from t5x_rationale.benchmarks import accelerator_checks as checks
from t5x_rationale.runtime.flops import measure_peak_matmul_flops

CUDNN_SKIP = "cudnn needs a GPU"
# versions recorded in the report, where installed
PACKAGES = (
    "jax",
    "jaxlib",
    "flax",
    "jax-cuda12-plugin",
    "jax-cuda12-pjrt",
    "nvidia-cudnn-cu12",
    "libtpu",
)


@dataclasses.dataclass(frozen=True)
class Plan:
    """Sizes of one run: keyword arguments of each check, and each bench's flags."""

    name: str
    bf16: tuple[dict, ...]
    sharded: tuple[dict, ...]
    attention_length: int
    benches: tuple[tuple[str, ...], ...]
    peak_matmul_size: int
    budget_s: float  # for the whole run
    checks_reserve_s: float  # of the budget, kept for the checks after the benches


def _bench(preset: str, batch: int, target_length: int, *flags: str) -> tuple[str, ...]:
    return ("--preset", preset, "--batch", str(batch), "--target_length", str(target_length),
            "--dtype", "bfloat16", *flags)  # fmt: skip


_SHARDED_DECODER = dict(preset="decoder-tiny", target_length=32)
_SHARDED_T5 = dict(preset="t5-tiny", target_length=16, input_length=32)
_STEPS_GPU = ("--steps", "5", "--warmup", "1", "--peak_matmul_size", "8192")
_STEPS_CPU = ("--steps", "2", "--warmup", "0", "--peak_matmul_size", "512")
_STEPS_QUIET_STAR_GPU = ("--steps", "3", "--warmup", "1", "--peak_matmul_size", "8192")
_QUIET_STAR = ("--objective", "quiet_star", "--implementation", "streams")
_SHORT_THOUGHTS = ("--num_ahead", "4", "--num_talk", "2")  # a smaller graph to compile on CPU

ACCELERATOR = Plan(
    name="accelerator",
    bf16=(
        dict(preset="decoder-125m", batch_size=4, target_length=256),
        dict(preset="t5-small", batch_size=4, target_length=128, input_length=256),
    ),
    sharded=(_SHARDED_DECODER, _SHARDED_T5),
    attention_length=512,
    benches=(
        _bench("decoder-1b", 8, 512, *_STEPS_GPU),
        _bench("t5-base", 32, 128, "--input_length", "512", *_STEPS_GPU),
        _bench("decoder-125m", 4, 256, *_QUIET_STAR, "--scan_layers", *_STEPS_QUIET_STAR_GPU),
    ),
    peak_matmul_size=8192,
    budget_s=480.0,
    checks_reserve_s=120.0,
)
TINY = Plan(
    name="tiny",
    bf16=(
        dict(preset="decoder-tiny", batch_size=8, target_length=32),
        dict(preset="t5-tiny", batch_size=8, target_length=16, input_length=32),
    ),
    # T5's sharded step is left to tests/test_sharding.py on CPU: it would add 20 s here.
    sharded=(_SHARDED_DECODER,),
    attention_length=256,
    benches=(
        _bench("decoder-tiny", 8, 32, *_STEPS_CPU),
        _bench("t5-tiny", 8, 16, "--input_length", "32", *_STEPS_CPU),
        _bench("decoder-tiny", 8, 16, *_QUIET_STAR, *_SHORT_THOUGHTS, *_STEPS_CPU),
    ),
    peak_matmul_size=512,
    budget_s=300.0,
    checks_reserve_s=120.0,
)


def environment() -> dict:
    """Backend, devices and the versions that decide what ran."""
    device = jax.devices()[0]
    versions = {}
    for package in PACKAGES:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            pass
    return dict(
        backend=jax.default_backend(),
        device_kind=device.device_kind,
        compute_capability=getattr(device, "compute_capability", None),
        device_count=jax.device_count(),
        local_device_count=jax.local_device_count(),
        process_count=jax.process_count(),
        jax_version=jax.__version__,
        jaxlib_version=versions.get("jaxlib"),
        packages=versions,
        python=platform.python_version(),
    )


def probe_environment(env: dict) -> dict:
    """`environment()` from a subprocess, so that this process leaves the device alone."""
    code = "import json; from {} import environment; print(json.dumps(environment()))"
    cmd = [sys.executable, "-c", code.format(__name__)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        raise RuntimeError(f"probing the backend failed: {proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _guarded(name: str, check: Callable[[], list[dict]]) -> list[dict]:
    """The check's entries, or one failed entry carrying the exception."""
    try:
        return check()
    except Exception as e:  # a check that crashes has failed; the report goes on
        tail = "".join(traceback.format_exception(e))[-3000:]
        return [{"name": name, "passed": False, "exception": tail}]


def run_checks(plan: Plan, backend: str) -> Iterator[list[dict]]:
    """The entries of each check in turn, run lazily (the caller saves between them)."""
    for kw in plan.bf16:
        kw = dict(kw)
        preset = kw.pop("preset")
        yield _guarded(f"bf16_vs_f32/{preset}", lambda: checks.bf16_vs_f32(preset, **kw))
    for case in checks.ATTENTION_CASES:
        name = f"attention_cudnn_vs_xla/{case}"
        if backend != "gpu":
            yield [checks.skipped(name, CUDNN_SKIP)]
            continue
        length = plan.attention_length
        yield _guarded(name, lambda: checks.attention_agreement(case, length=length))
    for kw in plan.sharded:
        kw = dict(kw)
        preset = kw.pop("preset")
        name = f"sharded_vs_one_device/{preset}"
        yield _guarded(name, lambda: checks.sharded_vs_one_device(preset, **kw))


def _fit_batch(flags: tuple[str, ...], devices: int) -> list[str]:
    """The flags with --batch rounded up to a multiple of the device count (bench's mesh
    spreads the batch over every device)."""
    flags = list(flags)
    i = flags.index("--batch") + 1
    flags[i] = str(-(-int(flags[i]) // devices) * devices)
    return flags


def run_bench(flags: list[str], *, timeout_s: float, env: dict) -> dict:
    """One `python -m t5x_rationale.bench` run: its JSON row, or the error it ended with."""
    row = {"flags": " ".join(flags)}
    if timeout_s <= 0:
        return dict(row, error="not run: the time budget was spent")
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "row.json")
        cmd = [sys.executable, "-m", "t5x_rationale.bench", *flags, "--json", out]
        # Huge pages (runtime/host_memory.py) re-execute bench once at start, for host memory
        # that matters only to long CPU steps; these are short, or on an accelerator.
        env = dict(env, T5XR_HUGE_PAGES=env.get("T5XR_HUGE_PAGES", "0"))
        try:
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return dict(row, error=f"stopped at the time budget after {timeout_s:.0f} s")
        row["wall_s"] = time.perf_counter() - start
        if proc.returncode != 0 or not os.path.exists(out):
            return dict(row, error=f"exit code {proc.returncode}: {proc.stderr[-3000:]}")
        with open(out) as f:
            return dict(row, **json.load(f))


def _add_dtype_mfu(row: dict, peak_bf16: float) -> None:
    """bench's MFU is against a float32 matmul; a bf16 row also gets MFU against bf16's."""
    if row.get("dtype") != "bfloat16" or "achieved_gflop_per_s" not in row:
        return
    peak = peak_bf16 * row["devices"] / 1e9
    row["peak_matmul_gflop_per_s_bf16"] = peak
    row["mfu_bf16_peak"] = row["achieved_gflop_per_s"] / peak


def _write(path: str, report: dict) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(report, f, indent=2)
    os.replace(tmp, path)


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _summary(entry: dict) -> str:
    if entry.get("skipped"):
        return f"SKIP {entry['name']}: {entry['skipped']}"
    verdict = "PASS" if entry["passed"] else "FAIL"
    if "error" not in entry:
        return f"{verdict} {entry['name']}: {entry.get('exception', '')[-300:]}"
    return f"{verdict} {entry['name']}: error {entry['error']:.3g} (tolerance {entry['tolerance']})"


def failures(report: dict) -> list[str]:
    """Names of the checks that failed and the benches that did not finish."""
    failed = [c["name"] for c in report["checks"] if c["passed"] is False]
    return failed + [f"bench {b['flags']}" for b in report["benches"] if "error" in b]


def run(out_path: str, *, quick: bool, bench_env: dict, command: list[str]) -> dict:
    """Runs the plan for this backend, rewriting the report at `out_path` after every step.

    Args:
      out_path: the JSON report.
      quick: the tiny plan on any backend.
      bench_env: the environment of the subprocesses.
      command: the command line, recorded in the report.

    Returns:
      The report; `passed` is False when a check failed or a bench did not finish.
    """
    start = time.perf_counter()
    report = probe_environment(bench_env)
    plan = TINY if quick or report["backend"] == "cpu" else ACCELERATOR
    report.update(command=command, plan=plan.name, budget_s=plan.budget_s)
    report.update(checks=[], benches=[], complete=False)
    elapsed = lambda: time.perf_counter() - start  # noqa: E731
    save = lambda: _write(out_path, dict(report, wall_s=elapsed()))  # noqa: E731
    for flags in plan.benches:
        timeout = plan.budget_s - plan.checks_reserve_s - elapsed()
        flags = _fit_batch(flags, report["device_count"])
        row = run_bench(flags, timeout_s=timeout, env=bench_env)
        report["benches"].append(row)
        _say(f"bench {row['flags']}: " + row.get("error", f"{row['tokens_per_s']:.0f} tokens/s"))
        save()
    began = time.perf_counter()
    for entries in run_checks(plan, report["backend"]):
        for entry in entries:
            entry["wall_s"] = time.perf_counter() - began
            _say(_summary(entry))
        report["checks"].extend(entries)
        save()
        began = time.perf_counter()
    peak = measure_peak_matmul_flops(plan.peak_matmul_size, dtype=jnp.bfloat16)
    for row in report["benches"]:
        _add_dtype_mfu(row, peak)
    report.update(failures=failures(report), complete=True)
    report.update(passed=not report["failures"], wall_s=elapsed())
    _write(out_path, report)
    return report
