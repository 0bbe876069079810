#!/usr/bin/env bash
# Checks and benches this machine's accelerator, writes one JSON report (see launch/README.md):
#   launch/accelerator_check.sh report.json [--quick]
set -euo pipefail
exec "${PYTHON:-python}" -m t5x_rationale.accelerator_check --out "${1:?usage: $0 REPORT.json [--quick]}" "${@:2}"
