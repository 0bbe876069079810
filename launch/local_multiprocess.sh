#!/usr/bin/env bash
# Runs an entry point as N jax.distributed processes on this machine (CPU, gloo collectives),
# each with D simulated devices: a real multi-host run over loopback, for testing launches.
#
#   launch/local_multiprocess.sh 2 4 train --gin_file=runs/quickstart.gin
#
# Usage: local_multiprocess.sh NUM_PROCESSES DEVICES_PER_PROCESS ENTRY_POINT [FLAGS...]
set -euo pipefail
num_processes=$1; devices=$2; entry=$3; shift 3
port=${PORT:-$((20000 + RANDOM % 20000))}
python=${PYTHON:-python}
pids=()
for ((i = 0; i < num_processes; i++)); do
  XLA_FLAGS="--xla_force_host_platform_device_count=${devices}" JAX_PLATFORMS=cpu \
    "$python" -m "t5x_rationale.${entry}" "$@" --coordinator_address="127.0.0.1:${port}" \
    --num_processes="${num_processes}" --process_id="${i}" &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
exit $status
