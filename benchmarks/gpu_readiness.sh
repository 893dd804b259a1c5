#!/usr/bin/env bash
# GPU readiness of training (issue 22): bf16 autocast, fused AdamW, achieved TFLOP/s and the fraction of
# the card's dense bf16 peak for stages 1 and 3, peak memory, and the largest stage-3 batch that fits.
# One short script for a lent GPU machine: bash benchmarks/gpu_readiness.sh [PEAK_TFLOPS]
# (H100 SXM 989, H200 989, A100 312). Prints JSON lines; about 5 minutes on an H100.
set -euo pipefail
cd "$(dirname "$0")/.."
PEAK=${1:-989}
PY=${PYTHON:-.venv/bin/python}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
for scope in fwd-bwd update; do
  $PY benchmarks/train_step.py --device cuda --amp --stages 1 --scope $scope --repeat-batch 32 --peak-tflops "$PEAK"
done                                                   # stage 1 at 8 x 32 = 256 images, the recipe's batch
$PY benchmarks/train_step.py --device cuda --amp --stages 3 --scope update --repeat-batch 4 --peak-tflops "$PEAK"
$PY benchmarks/train_step.py --device cuda --stages 3 --scope update --repeat-batch 4 --peak-tflops "$PEAK"  # fp32
$PY benchmarks/train_step.py --device cuda --amp --stages 3 --find-max-batch --repeat-batch 4
