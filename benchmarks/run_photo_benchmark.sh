#!/usr/bin/env bash
# The DINOv2-S benchmark on the photo sets (CIFAR-10 and the clothing photos
# from --data-root, default ../shared/data), in the order that answers the
# most first:
#   1. the frozen-feature probe on the benchmark's own splits (the recipe
#      check: single_exit must clearly beat it);
#   2. the regime check and the claim, seed 0: single_exit, dmpo, plain on
#      both sets;
#   3. the candidate changes to the method (dmpo_distill, dmpo_cov_all),
#      seed 0 on CIFAR-10, compared with dmpo on validation: a winner becomes
#      the default before the remaining DMPO runs are made;
#   4. seeds 1-2 of the core methods (clothing, then CIFAR-10), seed 0 of
#      the CIFAR-10 ablations, then seeds 1-2 of dmpo_cov_all and of the
#      ablations.
# One run per process; finished runs are skipped, so the script resumes
# where it stopped. With COMMIT=1 each landed run is committed.
# Usage: KERAS_BACKEND=torch COMMIT=1 nohup bash benchmarks/run_photo_benchmark.sh > photo.log 2>&1 &
set -eu
cd "$(dirname "$0")/.."
results=benchmarks/results/dmpo_dinov2
# A run started by an earlier copy of this script finishes first.
while pgrep -f "benchmarks/dmpo_benchmark.py" > /dev/null; do sleep 20; done
commit() {
    [ "${COMMIT:-0}" = 1 ] || return 0
    for _ in 1 2 3 4 5; do
        git add "$@" 2>/dev/null && git commit -q -m "DMPO benchmark on DINOv2-S photos: $*" -- "$@" && return 0
        sleep 5
    done
    echo "commit of $* failed"
}
for dataset in cifar10 clothing; do
    probe="benchmarks/results/depth_probe/${dataset}_pretrained_112px_benchmark_splits.json"
    [ -f "$probe" ] && continue
    .venv/bin/python benchmarks/depth_probe.py --datasets "$dataset" --backbones pretrained
    commit "$probe"
done
one() {  # dataset method seed
    local json="$results/$1/$2_seed$3.json"
    if [ -f "$json" ]; then  # landed; committed unless an earlier copy was stopped first
        git ls-files --error-unmatch "$json" > /dev/null 2>&1 || commit "$json" "${json%.json}.npz"
        return 0
    fi
    .venv/bin/python benchmarks/dmpo_benchmark.py --profile dinov2 --datasets "$1" --methods "$2" --seeds "$3"
    commit "$json" "${json%.json}.npz"
}
for dataset in cifar10 clothing; do
    for method in single_exit dmpo plain; do one "$dataset" "$method" 0; done
done
for method in dmpo_distill dmpo_cov_all; do one cifar10 "$method" 0; done
# Clothing first: its runs are short, so its 3-seed bars land first.
for dataset in clothing cifar10; do
    for seed in 1 2; do
        for method in single_exit dmpo plain; do one "$dataset" "$method" "$seed"; done
    done
done
# One seed of every ablation before more seeds of anything: each row of the
# ablation table then has a number.
ablations="no_bypass linear_heads one_phase lora_matched"
for method in $ablations; do one cifar10 "$method" 0; done
# The candidate whose validation mean led on seed 0, on two more seeds.
for seed in 1 2; do one cifar10 dmpo_cov_all "$seed"; done
# It kept the lead over 3 seeds on CIFAR-10 validation (mean of the 25-75%
# budgets), so it is run on the clothing photos too, before more ablation
# seeds: the claim check then has the adopted variant on both sets.
for seed in 0 1 2; do one clothing dmpo_cov_all "$seed"; done
for seed in 1 2; do
    for method in $ablations; do one cifar10 "$method" "$seed"; done
done
