"""``keras-dmpo demo``: the whole pipeline on real data, in a few minutes.

Tune a pre-trained ViT with DMPO on Fashion-MNIST (or digits), calibrate exit
thresholds for 30% and 50% FLOPs budgets, compare with the full model, plot,
export TFLite stage graphs (batch-1, so that a browser runs them too: ``keras-dmpo
web``) and run them with the LiteRT runtime. The default
backbone is the real DINOv2-S/14 (``dinov2_small_imgfocus``, fetched by
``make demo``) at 84 px on all 10 Fashion-MNIST classes; ``--preset
dmpo_vit_tiny`` runs the shipped 1 M-parameter toy ViT in about half the time.
"""

import concurrent.futures
import json
import os
import time

import keras
import numpy as np

from keras_dmpo.datasets import load_data
from keras_dmpo.export.web_samples import write_web_samples
from keras_dmpo.inference.early_exit import EarlyExitModel
from keras_dmpo.litert import StagedRuntime
from keras_dmpo.models.dmpo_classifier import DMPOClassifier
from keras_dmpo.models.options import load_preset_backbone
from keras_dmpo.optional_deps import require
from keras_dmpo.preset_registry import DEMO_IMAGE_SIZE, DEMO_PRESET, target_classes
from keras_dmpo.training.phase_schedule import PhaseCallback, PhaseSchedule

# Sized for <= 5 minutes on 2 idle CPU cores (README). DINOv2-S: DEMO_IMAGE_SIZE
# (why that size: preset_registry), 2,048 training images, a 2,048-image test
# subset. Other presets: their own image size.
DEMO_DEFAULTS = {
    DEMO_PRESET: {
        "image_size": DEMO_IMAGE_SIZE,
        "fashion_mnist": {"epochs": 3, "train_size": 2048, "validation_size": 1024, "test_size": 2048},
        "digits": {"epochs": 6, "train_size": None, "validation_size": 360, "test_size": None},
    },
    None: {
        "image_size": None,
        "fashion_mnist": {"epochs": 3, "train_size": 3200, "validation_size": 1024, "test_size": None},
        "digits": {"epochs": 6, "train_size": None, "validation_size": 360, "test_size": None},
    },
}
BUDGETS = (0.3, 0.5)
# Test images written beside the export for the browser page (keras-dmpo web).
WEB_SAMPLES = 24


def _line(text=""):
    print(text, flush=True)


def run_demo(
    *,
    output_dir="dmpo-demo",
    data="fashion_mnist",
    preset=DEMO_PRESET,
    image_size=None,
    epochs=None,
    train_size=None,
    test_size=None,
    batch_size=64,
    max_steps=None,
):
    """The end-to-end demo: tune ``preset`` on ``data`` with DMPO, calibrate the
    ``BUDGETS``, compare with the full model, plot, export TFLite stage graphs
    and run them with LiteRT. Results go to ``output_dir``. ``None`` sizes
    take the preset's defaults (``DEMO_DEFAULTS``); ``max_steps`` caps the
    training steps per epoch (smoke tests). Returns 0."""
    start = time.time()
    os.makedirs(output_dir, exist_ok=True)
    preset_defaults = DEMO_DEFAULTS.get(preset, DEMO_DEFAULTS[None])
    defaults = preset_defaults[data]
    epochs = epochs or defaults["epochs"]
    keras.utils.set_random_seed(0)
    backend = keras.backend.backend()
    _line(f"== keras_dmpo demo on the {backend} backend; results in {output_dir}/")

    backbone, options, splits, class_names = _load(
        preset,
        data,
        image_size or preset_defaults["image_size"],
        batch_size,
        train_size=train_size if train_size is not None else defaults["train_size"],
        validation_size=defaults["validation_size"],
        test_size=test_size if test_size is not None else defaults["test_size"],
    )
    (x_train, y_train), (x_val, y_val), (x_test, y_test) = splits
    model, train_seconds = _tune(
        backbone, options, len(class_names), (x_train, y_train), epochs, batch_size, max_steps
    )

    # --- calibrate and compare ---------------------------------------------------
    ee = EarlyExitModel(model)
    eval_start = time.time()
    curve, rows = _budget_rows(ee, (x_val, y_val), (x_test, y_test))
    full_accuracy = curve.single_exits[-1]["test_accuracy"]
    curve_png = curve.plot(
        os.path.join(output_dir, "accuracy_vs_flops.png"), title=f"DMPO early exit on {data} ({backend})"
    )
    curve.save_json(os.path.join(output_dir, "curve.json"))

    # Keep the 30% thresholds (or the first reachable budget) for the export,
    # and run the real batched early-exit loop with them.
    chosen = rows[0] if rows else None
    if chosen:
        ee.policy = chosen["policy"]  # the curve calibrated it on x_val already
    model_path = ee.save(os.path.join(output_dir, "model.keras"))
    export_dir = os.path.join(output_dir, "tflite")
    # On JAX and torch the export is a TensorFlow subprocess (about 40 s):
    # run it beside the early-exit pass below instead of after it.
    wait_for_export = _start_export(ee, export_dir, class_names, background=backend != "tensorflow")
    out = None
    if chosen:
        out = ee.predict(x_test, batch_size=batch_size)
        chosen["exit_counts"] = np.bincount(out["exit_index"], minlength=ee.num_exits).tolist()
        chosen["test_accuracy"] = float((out["labels"] == y_test).mean())
        chosen["test_flops_fraction"] = float(out["flops"].mean() / ee.full_model_flops)
    eval_seconds = time.time() - eval_start
    _print_table(ee, full_accuracy, rows, len(x_val), eval_seconds)
    examples_png = _plot_examples(
        ee, x_test, y_test, class_names, os.path.join(output_dir, "examples.png"), out
    )

    # --- TFLite stage graphs + LiteRT runtime -----------------------------------
    export_seconds = wait_for_export()
    runtime_report = _run_litert(ee, export_dir, x_test, out if chosen else None)
    _print_litert(export_dir, export_seconds, runtime_report)
    write_web_samples(export_dir, x_test[:WEB_SAMPLES], y_test[:WEB_SAMPLES])
    _line(f"In a browser, each of {WEB_SAMPLES} test images at its exit: keras-dmpo web {export_dir}")

    total = time.time() - start
    summary = {
        "backend": backend,
        "preset": preset,
        "data": data,
        "classes": class_names,
        "epochs": epochs,
        "train_images": int(len(x_train)),
        "test_images": int(len(x_test)),
        "exits": list(ee.exits),
        "flops_per_exit": ee.flops_per_exit,
        "full_model_flops": ee.full_model_flops,
        "full_model_test_accuracy": full_accuracy,
        "budgets": rows,
        "litert": runtime_report,
        "train_seconds": round(train_seconds, 1),
        "evaluation_seconds": round(eval_seconds, 1),
        "export_seconds": round(export_seconds, 1),
        "total_seconds": round(total, 1),
    }
    with open(os.path.join(output_dir, "summary.json"), "w") as handle:
        json.dump(summary, handle, indent=2)
    _write_report(output_dir, summary, curve, model_path, curve_png, examples_png)
    _line(f"\ndone in {total:.0f} s; see {os.path.join(output_dir, 'report.md')}")
    return 0


def _load(preset, data, image_size, batch_size, *, train_size, validation_size, test_size):
    """The backbone (and its preset's options) and the data splits at its image size."""
    backbone, options = load_preset_backbone(
        preset, image_shape=None if image_size is None else (image_size, image_size, 3)
    )
    config = backbone.get_config()
    image_shape = tuple(config["image_shape"])
    _line(
        f"preset {preset}: {type(backbone).__name__} {config['num_layers']} blocks x "
        f"{config['hidden_dim']}, {image_shape[0]}x{image_shape[1]}x{image_shape[2]}, "
        f"patch {config['patch_size']}"
    )
    # The shipped preset saw 5 Fashion-MNIST classes labelled in pre-training:
    # tune and test on the other 5 (an honest transfer, docs/data.md).
    classes = target_classes(preset, data)
    loaded = load_data(
        data,
        image_shape,
        seed=0,
        train_size=train_size,
        validation_size=validation_size,
        test_size=test_size,
        classes=classes,
    )
    # Whole batches only: on JAX a short last batch is one more XLA
    # compilation of the training and validation steps (about 25 s here).
    train = _whole_batches(*loaded["train"], batch_size)
    validation = _whole_batches(*loaded["validation"], batch_size)
    class_names = list(loaded["class_names"])
    _line(
        f"data {data}: {len(train[0])} train / {len(validation[0])} validation / "
        f"{len(loaded['test'][0])} test images, {len(class_names)} classes"
        + (f" (held out from pre-training: {', '.join(class_names)})" if classes else "")
    )
    return backbone, options, (train, validation, loaded["test"]), class_names


def _tune(backbone, options, num_classes, train, epochs, batch_size, max_steps):
    """DMPO tuning with the two-phase schedule; returns the model and seconds.

    No ``validation_data``: the validation split is scored once, after
    tuning, by the calibration (every exit). Scoring it after every epoch
    too would add a forward pass over it per epoch: with half as many
    validation as training images and a training step costing about three
    forward passes, a sixth more compute."""
    model = DMPOClassifier(backbone=backbone, num_classes=num_classes, **options)
    model.compile(optimizer=keras.optimizers.AdamW(2e-3, weight_decay=1e-4))
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    frozen = sum(int(np.prod(w.shape)) for w in model.non_trainable_weights)
    _line(
        f"DMPOClassifier: exits at blocks {list(model.exits)}, covariance heads at "
        f"{[model.exits[i] for i in model.covariance_positions]}; {trainable:,} trainable / "
        f"{frozen:,} frozen parameters"
    )
    x_train, y_train = train
    start = time.time()
    fit_kwargs = dict(epochs=epochs, verbose=1, callbacks=[PhaseCallback(PhaseSchedule(switch_fraction=0.5))])
    if max_steps:
        import tensorflow as tf

        steps = min(max_steps, int(np.ceil(len(x_train) / batch_size)))
        dataset = tf.data.Dataset.from_tensor_slices((x_train, y_train)).batch(batch_size).take(steps)
        model.fit(dataset, shuffle=False, **fit_kwargs)
    else:
        model.fit(x_train, y_train, batch_size=batch_size, **fit_kwargs)
    return model, time.time() - start


def _budget_rows(ee, validation, test):
    """The accuracy/FLOPs curve and a row per demo budget.

    One pass over validation and test computes every exit's probabilities;
    the budget sweep reuses them (the same thresholds and exits as the
    batched early-exit loop, which is tested to match it).
    """
    curve = ee.curve(*validation, *test)
    rows = []
    for budget in BUDGETS:
        row = next((r for r in curve.rows if abs(r["budget"] - budget) < 1e-9), None)
        if row is None:
            _line(
                f"budget {budget:.0%}: below the cost of the first exit ({ee.flops_fractions[0]:.1%}); skipped"
            )
            continue
        rows.append(
            {
                "budget": budget,
                "thresholds": row["thresholds"],
                "test_accuracy": row["test_accuracy"],
                "test_flops_fraction": row["test_fraction"],
                "exit_counts": [int(round(f * len(test[0]))) for f in row["exit_fractions"]],
                "validation_accuracy": row["validation_accuracy"],
                "policy": row["policy"],
            }
        )
    return curve, rows


def _print_table(ee, full_accuracy, rows, num_validation, eval_seconds):
    _line("")
    _line(f"{'':22}{'FLOPs':>8}{'test acc.':>11}   exits taken (blocks {list(ee.exits)})")
    _line(f"{'full model (last exit)':22}{'100.0%':>8}{100 * full_accuracy:>10.2f}%")
    for row in rows:
        _line(
            f"{'DMPO @ ' + format(row['budget'], '.0%') + ' budget':22}{row['test_flops_fraction']:>8.1%}"
            f"{100 * row['test_accuracy']:>10.2f}%   {row['exit_counts']}"
        )
    _line(f"(calibration on {num_validation} validation images and the test sweep took {eval_seconds:.0f} s)")


def _print_litert(export_dir, export_seconds, report):
    _line("")
    _line(
        f"TFLite stage graphs in {export_dir}/ ({export_seconds:.0f} s): LiteRT vs Keras on "
        f"{report['images']} test images: same exit for {report['same_exit']:.2%}, "
        f"same label for {report['same_label']:.2%}, max |prob diff| {report['max_prob_diff']:.1e}"
    )
    _line(
        f"LiteRT batch-1 latency: staged {report['staged_ms']:.3f} ms/image vs monolithic "
        f"{report['monolithic_ms']:.3f} ms/image (ratio {report['latency_ratio']:.2f}, "
        f"FLOPs {report['flops_fraction']:.1%})"
    )


def _start_export(ee, directory, class_names, background):
    """Returns a function that waits for ``ee.export_tflite`` and gives its
    seconds (re-raising its error). With ``background`` the export starts now
    in a thread, which mostly waits on the TensorFlow subprocess, so the Keras
    work in the main thread overlaps it; otherwise it runs when waited for."""

    def export():
        start = time.time()
        # Batch-1 graphs: the same bundle runs in StagedRuntime and in a
        # browser (LiteRT.js cannot resize a graph's batch).
        ee.export_tflite(directory, overwrite=True, class_names=class_names, web=True)
        return time.time() - start

    if not background:
        return export
    pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="keras-dmpo-export")
    future = pool.submit(export)
    pool.shutdown(wait=False)
    return future.result


def _whole_batches(x, y, batch_size):
    keep = len(x) - len(x) % batch_size if len(x) >= batch_size else len(x)
    return x[:keep], y[:keep]


def _run_litert(ee, export_dir, x_test, keras_out=None, max_latency_images=500):
    runtime = StagedRuntime(export_dir)
    if keras_out is None:
        keras_out = ee.predict(x_test)
    lite_out = runtime.predict(x_test)
    n = min(len(x_test), max_latency_images)
    sample = x_test[:n]
    for image in sample[:20]:  # warm up every interpreter
        runtime.predict(image[None])
        runtime.predict_monolithic(image[None])
    start = time.perf_counter()
    for image in sample:
        runtime.predict(image[None])
    staged = (time.perf_counter() - start) / n
    start = time.perf_counter()
    for image in sample:
        runtime.predict_monolithic(image[None])
    monolithic = (time.perf_counter() - start) / n
    return {
        "images": int(len(x_test)),
        "same_exit": float(np.mean(keras_out["exit_index"] == lite_out["exit_index"])),
        "same_label": float(np.mean(keras_out["labels"] == lite_out["labels"])),
        "max_prob_diff": float(np.max(np.abs(keras_out["probabilities"] - lite_out["probabilities"]))),
        "staged_ms": 1000 * staged,
        "monolithic_ms": 1000 * monolithic,
        "latency_ratio": staged / monolithic,
        "flops_fraction": float(lite_out["flops"][:n].mean() / ee.full_model_flops),
        "latency_images": int(n),
    }


def _plot_examples(ee, x, y, class_names, path, out=None, per_exit=4):
    matplotlib = require("matplotlib", "plot", "The demo's figures")
    matplotlib.use("Agg")  # files only: no display needed
    plt = require("matplotlib.pyplot", "plot", "The demo's figures")

    if out is None:
        out = ee.predict(x[:512])
    columns = []
    for k in range(ee.num_exits):
        columns.extend(np.flatnonzero(out["exit_index"] == k)[:per_exit].tolist())
    columns = columns[:24]
    if not columns:
        return None
    cols = min(8, len(columns))
    rows = int(np.ceil(len(columns) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(1.6 * cols, 1.9 * rows), dpi=110, squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, i in zip(axes.ravel(), columns):
        ax.imshow(x[i].mean(-1) if x.shape[-1] == 3 else x[i][..., 0], cmap="gray")
        ok = out["labels"][i] == y[i]
        ax.set_title(
            f"exit {ee.exits[out['exit_index'][i]]}\n{class_names[out['labels'][i]]}",
            fontsize=7,
            color="green" if ok else "red",
        )
    fig.suptitle("test images and the exit (block) each took; red = wrong", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _write_report(out_dir, summary, curve, model_path, curve_png, examples_png):
    lines = [
        "# keras_dmpo demo report",
        "",
        f"Backend `{summary['backend']}`, preset `{summary['preset']}`, data `{summary['data']}`: "
        f"{summary['train_images']} training images, {summary['epochs']} epochs "
        f"({summary['train_seconds']} s), {summary['test_images']} test images.",
        "",
        f"Exits at blocks {summary['exits']}; FLOPs per image to answer at each exit: "
        + ", ".join(f"{f / 1e6:.1f} M" for f in summary["flops_per_exit"])
        + f"; full model {summary['full_model_flops'] / 1e6:.1f} MFLOPs (a multiply-add = 2 FLOPs).",
        "",
        "| | FLOPs | test accuracy |",
        "|---|---|---|",
        f"| full model (last exit) | 100% | {100 * summary['full_model_test_accuracy']:.2f}% |",
    ]
    for row in summary["budgets"]:
        lines.append(
            f"| DMPO, {row['budget']:.0%} budget | {row['test_flops_fraction']:.1%} | "
            f"{100 * row['test_accuracy']:.2f}% |"
        )
    lite = summary["litert"]
    lines += [
        "",
        f"![accuracy vs FLOPs]({os.path.basename(curve_png)})",
        "",
        "Thresholds are calibrated on the validation split for each budget; accuracy is on the test split.",
        "",
    ]
    single = [row["test_accuracy"] for row in curve.single_exits]
    best = int(np.argmax(single))
    if best < len(single) - 1:
        # Say it when it happens: readers expect the deepest exit to be best.
        lines += [
            f"Here an early exit (block {curve.single_exits[best]['exit']}, {100 * single[best]:.2f}%) is more "
            f"accurate than the last one ({100 * single[-1]:.2f}%): the second phase of this short tuning "
            "weights the early exits most. Multi-seed comparisons with plain multi-exit tuning and the "
            "single-exit model are in docs/benchmarks.md.",
            "",
        ]
    lines += ["## Curve", "", curve.table(), ""]
    if examples_png:
        lines += [f"![examples]({os.path.basename(examples_png)})", ""]
    lines += [
        "## TFLite / LiteRT",
        "",
        f"Stage graphs and `manifest.json` in `tflite/`. LiteRT vs Keras on {lite['images']} test images: "
        f"same exit {lite['same_exit']:.2%}, same label {lite['same_label']:.2%}, max probability "
        f"difference {lite['max_prob_diff']:.1e}.",
        f"Batch-1 latency over {lite['latency_images']} images: staged {lite['staged_ms']:.3f} ms vs monolithic "
        f"{lite['monolithic_ms']:.3f} ms (ratio {lite['latency_ratio']:.2f} at {lite['flops_fraction']:.1%} FLOPs).",
        "",
        f"Model: `{os.path.basename(model_path)}` with thresholds in `model.early_exit.json`. "
        f"Total demo time {summary['total_seconds']} s.",
    ]
    with open(os.path.join(out_dir, "report.md"), "w") as handle:
        handle.write("\n".join(lines) + "\n")
