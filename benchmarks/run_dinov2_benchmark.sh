#!/usr/bin/env bash
# The DINOv2-S benchmark in the order that answers the most first: the regime
# check (single_exit, dmpo, plain) on Fashion-MNIST for all seeds, then the
# ablations of seed 0, then digits, then the other seeds' ablations. Every run writes its own JSON
# and finished runs are skipped, so this script resumes where it stopped.
# Usage: KERAS_BACKEND=torch nohup bash benchmarks/run_dinov2_benchmark.sh > bench.log 2>&1 &
set -eu
cd "$(dirname "$0")/.."
run() { .venv/bin/python benchmarks/dmpo_benchmark.py --profile dinov2 "$@"; }
run --datasets fashion_mnist --seeds 0 --methods single_exit,dmpo,plain
run --datasets fashion_mnist --seeds 1,2 --methods single_exit,dmpo,plain
run --datasets fashion_mnist --seeds 0
run --datasets digits --seeds 0,1,2
run --datasets fashion_mnist --seeds 1,2
