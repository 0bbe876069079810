"""Checks and benches the accelerator in one command, and writes one JSON report.

    python -m t5x_rationale.accelerator_check --out report.json [--quick]
    launch/accelerator_check.sh report.json [--quick]

Checks (each passes or fails, with its measured error and stated tolerance): bf16 against
f32 forward (a decoder and a T5), cuDNN against XLA attention (GPU only; elsewhere recorded
as skipped), one train step sharded over all local devices against one device. Benches
(`python -m t5x_rationale.bench` in subprocesses): decoder-1b and t5-base in bf16 and the
Quiet-STaR streams step, or the tiny presets on CPU and with `--quick`. The plans, sizes and
the GPU time budget (under 8 minutes on one H100) are in
`t5x_rationale/benchmarks/accelerator_report.py`, the checks and their tolerances in
`benchmarks/accelerator_checks.py`. On CPU, `XLA_FLAGS=--xla_force_host_platform_device_count=8`
gives the sharded check 8 devices.

Exit code 0 when every check passed and every bench ran, 1 otherwise.
"""

from __future__ import annotations

import argparse
import os
import sys

from t5x_rationale.benchmarks import accelerator_report


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--out", required=True, help="the JSON report")
    p.add_argument("--quick", action="store_true", help="the tiny sizes on any backend")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    given = sys.argv[1:] if argv is None else argv
    command = [sys.executable, "-m", "t5x_rationale.accelerator_check", *given]
    report = accelerator_report.run(
        args.out, quick=args.quick, bench_env=dict(os.environ), command=command
    )
    print(
        f"{args.out}: {'passed' if report['passed'] else 'FAILED'} on {report['backend']} "
        f"({report['device_count']} x {report['device_kind']}) in {report['wall_s']:.0f} s"
        + "".join(f"\n  failed: {name}" for name in report["failures"])
    )
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
