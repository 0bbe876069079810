#!/usr/bin/env bash
# The thinking study (docs/thinking_study.md) on this machine: the base LM, Quiet-STaR at
# each policy weight beta given, evaluate_thoughts on every checkpoint, the curves PNG.
#
#   bash launch/thinking_study.sh OUT_DIR [BETA...]      (default betas: 1 100; the base takes about 15 minutes, each Quiet-STaR run 300 steps)
#
# Runs share the CPU cores (one core each with taskset when there are two runs and cores).
set -euo pipefail
out=$(realpath -m "${1:?usage: thinking_study.sh OUT_DIR [BETA...]}"); shift
betas=("${@:-1 100}"); betas=(${betas[@]})
here=$(cd "$(dirname "$0")/.." && pwd)
py=${PYTHON:-python}
cd "$here/configs"
mkdir -p "$out"
# Every step resumes where a killed study stopped (a finished run returns at once).
$py -m t5x_rationale.train \
  --gin_file=runs/thinking_study_base.gin --gin.RUN_DIR="'$out/base'" --gin.train.console=False
i=0
for beta in "${betas[@]}"; do
  pin=(); [ "${#betas[@]}" -le "$(nproc)" ] && pin=(taskset -c "$i")
  "${pin[@]}" $py -m t5x_rationale.train --gin_file=runs/thinking_study.gin \
    --gin.BASE="'$out/base/checkpoints'" --gin.RUN_DIR="'$out/beta$beta'" \
    --gin.quiet_star_loss.beta="$beta" --gin.train.console=False &
  i=$((i + 1))
done
wait
runs=()
for beta in "${betas[@]}"; do
  for step in "$out/beta$beta"/checkpoints/*/; do
    step=$(basename "$step")
    [ -f "$out/beta$beta/eval/$step/thought_eval.json" ] || $py -m t5x_rationale.evaluate_thoughts \
      --gin_file=models/quiet_star_tiny.gin --gin_file=runs/evaluate_thoughts.gin \
      --gin.CHECKPOINT_PATH="'$out/beta$beta/checkpoints/$step'" \
      --gin.OUTPUT_DIR="'$out/beta$beta/eval/$step'" \
      --gin.evaluate_thoughts.mixture_or_task_name="'synthetic_arith_multistep_text'" \
      --gin.evaluate_thoughts.questions_corpus="'synthetic_arith_multistep'"
  done
  runs+=(--run "beta$beta=$out/beta$beta")
done
$py -m t5x_rationale.benchmarks.thinking_curves "${runs[@]}" --out "$out/thinking_study.png"
