#!/usr/bin/env bash
# "Train to convergence": before the DINOv2-S table is read, the
# single-exit model must clearly beat a linear probe of the frozen features
# on the same number of training images. This runs the probe at the
# benchmark's sizes and the single-exit model under candidate recipes, each
# in its own results folder; the recipe is then chosen on *validation*
# accuracy (never test) and recorded in docs/benchmarks.md. Resumable.
# Usage: KERAS_BACKEND=torch nohup bash benchmarks/run_recipe_check.sh > recipe.log 2>&1 &
set -eu
cd "$(dirname "$0")/.."
out=benchmarks/results/dmpo_dinov2_recipe
.venv/bin/python benchmarks/depth_probe.py --datasets fashion_mnist --backbones pretrained \
    --train-size 1000 --test-size 5000
run() { tag=$1; shift; .venv/bin/python benchmarks/dmpo_benchmark.py --profile dinov2 \
    --datasets fashion_mnist --seeds 0 --results-dir "$out/$tag" "$@"; }
run e30 --methods single_exit --epochs 30
run e10_lr6e-3 --methods single_exit --learning-rate 6e-3
