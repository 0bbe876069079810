#!/usr/bin/env bash
# Runs an entry point on every host of a Cloud TPU VM pod slice; JAX finds the other hosts.
#
#   launch/tpu_pod.sh my-tpu us-central2-b train --gin_file=models/t5_base.gin \
#     --gin_file=meshes/fsdp.gin --gin_file=runs/finetune_seq2seq.gin --gin.TASK=... --gin.RUN_DIR=/mnt/shared/run
#
# Assumes the repository is checked out at ~/t5x_rationale on every host with its venv.
set -euo pipefail
tpu=$1; zone=$2; entry=$3; shift 3
args=$(printf ' %q' "$@")
gcloud compute tpus tpu-vm ssh "$tpu" --zone "$zone" --worker=all --command \
  "cd ~/t5x_rationale && .venv/bin/python -m t5x_rationale.${entry} --distributed${args}"
