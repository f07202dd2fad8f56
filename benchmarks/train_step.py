"""Train-step time and peak memory: DMPOClassifier against the single-head PEFT model.

Two models on the same (random) keras-hub ViT, same trunk PEFT (parallel
adapters, backbone frozen), batch 64, default ``compile`` (AdamW; Keras'
default ``jit_compile``: XLA on JAX, ``tf.function`` on TF, eager on torch):

- ``dmpo``: ``DMPOClassifier`` with its defaults (every block an exit for
  <= 8 blocks, about 8 for deeper; bypass + covariance heads on the early
  exits).
- ``single``: ``DMPOClassifier(exits=[num_layers])``: one linear head on the
  last block, no bypass, no covariance head.

Configs:
- ``tiny``: the test suite's ViT (tests/conftest.py ``TINY_VIT``): 32x32,
  patch 8, 4 blocks x 32 wide, 2 heads, MLP 64.
- ``vit_s``: ViT-S width and depth (12 blocks x 384, 6 heads, MLP 1536) at a
  reduced image size, 64x64 with patch 8 (65 tokens instead of 197 at 224/16),
  so that a CPU step takes seconds.

Step time: one process per backend; the two models' ``train_on_batch`` calls
alternate (A B A B ...) on a fixed batch; ``--warmup`` pairs are dropped
(compilation), then the median of ``--steps`` pairs, and the median of the
per-pair ratios dmpo/single.

Peak memory: one fresh process per (backend, config, model): ``ru_maxrss``
(the process's peak resident set size, which includes the ~1 GB of
TensorFlow/keras-hub that every backend imports) after building and compiling
the model, and after ``--memory-steps`` train steps (the first includes
compilation). ``training_peak_mb`` is the difference: what training added on
top of the built model (activations, gradients, optimizer slots, compiler
work space).

Run:
    .venv/bin/python benchmarks/train_step.py                       # all
    .venv/bin/python benchmarks/train_step.py --backends jax --configs tiny
Results are merged into benchmarks/results/train_step.json by (backend, config).
"""

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(REPO, "benchmarks", "results", "train_step.json")
BATCH = 64
NUM_CLASSES = 10

CONFIGS = {
    "tiny": dict(image_shape=(32, 32, 3), patch_size=8, num_layers=4, num_heads=2, hidden_dim=32, mlp_dim=64),
    "vit_s": dict(
        image_shape=(64, 64, 3), patch_size=8, num_layers=12, num_heads=6, hidden_dim=384, mlp_dim=1536
    ),
}


def _maxrss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _build(config, kind, seed=0):
    import keras
    import keras_hub

    from keras_dmpo import DMPOClassifier

    keras.utils.set_random_seed(seed)
    backbone = keras_hub.models.ViTBackbone(**CONFIGS[config])
    exits = [CONFIGS[config]["num_layers"]] if kind == "single" else None
    model = DMPOClassifier(backbone, num_classes=NUM_CLASSES, exits=exits)
    model.compile(optimizer=keras.optimizers.AdamW(1e-3))
    return model


def _batch(config):
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.uniform(size=(BATCH,) + CONFIGS[config]["image_shape"]).astype("float32")
    y = rng.integers(0, NUM_CLASSES, size=BATCH)
    return x, y


def _params(model):
    import numpy as np

    count = lambda ws: int(sum(np.prod(w.shape) for w in ws))  # noqa: E731
    return {"trainable": count(model.trainable_weights), "frozen": count(model.non_trainable_weights)}


def worker_time(config, steps, warmup):
    import keras

    models = {kind: _build(config, kind) for kind in ("dmpo", "single")}
    x, y = _batch(config)
    times = {kind: [] for kind in models}
    for i in range(warmup + steps):
        for kind, model in models.items():
            start = time.perf_counter()
            model.train_on_batch(x, y)
            elapsed = time.perf_counter() - start
            if i >= warmup:
                times[kind].append(elapsed)
    ratios = [a / b for a, b in zip(times["dmpo"], times["single"])]
    return {
        "backend": keras.backend.backend(),
        "config": config,
        "batch_size": BATCH,
        "exits": {kind: list(m.exits) for kind, m in models.items()},
        "params": {kind: _params(m) for kind, m in models.items()},
        "steps": steps,
        "warmup": warmup,
        "step_seconds": {kind: t for kind, t in times.items()},
        "median_step_seconds": {kind: statistics.median(t) for kind, t in times.items()},
        "ratio_dmpo_over_single": statistics.median(ratios),
        "ratio_min_max": [min(ratios), max(ratios)],
    }


def worker_memory(config, kind, steps):
    import keras

    after_import = _maxrss_mb()
    model = _build(config, kind)
    x, y = _batch(config)
    built = _maxrss_mb()
    for _ in range(steps):
        model.train_on_batch(x, y)
    peak = _maxrss_mb()
    return {
        "backend": keras.backend.backend(),
        "config": config,
        "model": kind,
        "steps": steps,
        "maxrss_after_import_mb": after_import,
        "maxrss_after_build_mb": built,
        "maxrss_after_training_mb": peak,
        "training_peak_mb": peak - built,
    }


def _subprocess(backend, args):
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run(
        [sys.executable, os.path.abspath(__file__)] + args, capture_output=True, text=True, env=env
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{backend} {args} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return json.loads(lines[-1][len("RESULT ") :])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backends", default="tensorflow,jax,torch")
    parser.add_argument("--configs", default="tiny,vit_s")
    parser.add_argument("--steps", type=int, default=None, help="timed pairs (default 20 tiny, 3 vit_s)")
    parser.add_argument("--warmup", type=int, default=None, help="dropped pairs (default 2 tiny, 1 vit_s)")
    parser.add_argument(
        "--memory-steps",
        type=int,
        default=None,
        help="train steps in the memory process (default 2 tiny, 1 vit_s)",
    )
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--worker", choices=["time", "memory"])
    parser.add_argument("--config")
    parser.add_argument("--model")
    args = parser.parse_args()

    if args.worker == "time":
        result = worker_time(args.config, args.steps, args.warmup)
        print("RESULT " + json.dumps(result))
        return
    if args.worker == "memory":
        print("RESULT " + json.dumps(worker_memory(args.config, args.model, args.memory_steps)))
        return

    results = {"runs": {}}
    if os.path.isfile(RESULTS):
        with open(RESULTS) as handle:
            results = json.load(handle)
    for backend in args.backends.split(","):
        for config in args.configs.split(","):
            steps = args.steps or (20 if config == "tiny" else 3)
            warmup = args.warmup if args.warmup is not None else (2 if config == "tiny" else 1)
            memory_steps = args.memory_steps or (2 if config == "tiny" else 1)
            started = time.time()
            entry = _subprocess(
                backend,
                ["--worker", "time", "--config", config, "--steps", str(steps), "--warmup", str(warmup)],
            )
            if not args.no_memory:
                entry["memory"] = {
                    kind: _subprocess(
                        backend,
                        [
                            "--worker",
                            "memory",
                            "--config",
                            config,
                            "--model",
                            kind,
                            "--memory-steps",
                            str(memory_steps),
                        ],
                    )
                    for kind in ("dmpo", "single")
                }
            entry["load_average_1m_at_end"] = os.getloadavg()[0]
            entry["cpu_count"] = os.cpu_count()
            entry["machine"] = platform.machine()
            entry["wall_seconds"] = time.time() - started
            entry["date"] = time.strftime("%Y-%m-%d %H:%M:%S")
            results["runs"][f"{backend}/{config}"] = entry
            med = entry["median_step_seconds"]
            print(
                f"{backend:10s} {config:6s} dmpo {med['dmpo']:.3f}s single {med['single']:.3f}s "
                f"ratio {entry['ratio_dmpo_over_single']:.2f} "
                f"(load {entry['load_average_1m_at_end']:.1f})",
                flush=True,
            )
            os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
            with open(RESULTS, "w") as handle:
                json.dump(results, handle, indent=2)


if __name__ == "__main__":
    main()
