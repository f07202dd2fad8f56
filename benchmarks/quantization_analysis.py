"""Every quantization mode of ``export_tflite`` on one model: stage sizes,
LiteRT against the float model, and which ops break static int8.

Usage:

    # a small random DINOv2-like model on random images (a few minutes):
    KERAS_BACKEND=tensorflow python benchmarks/quantization_analysis.py --tiny-dinov2
    # a saved EarlyExitModel on its data (a named data set or a class-per-folder
    # directory: calibration on its training split, evaluation on its test split):
    KERAS_BACKEND=tensorflow python benchmarks/quantization_analysis.py \\
        --model /tmp/keras_dmpo_bench/early_exit_dinov2.keras --data fashion_mnist --name dinov2

Per mode (float32; the TFLite converter's dynamic, float16, int8; the LiteRT
quantizer's named recipes), through ``EarlyExitModel.export_tflite`` and
``StagedRuntime`` with the model's own thresholds: stage and monolithic file
sizes; against ``EarlyExitModel.predict`` (float Keras) the fraction of
images answered at the same exit and with the same label, and max |dp|; the
monolithic graph's same-label rate against Keras' last exit.

Then, on the monolithic graph (the whole network in one graph), the two
views of ``keras_dmpo.export.quantization_report``: the quantizer's
per-tensor validation of ``static_int8`` and ``mixed`` summarised per op
type (median SNR *drop* across each op), and the sensitivity of the outputs
to each op type alone in static int8 (``--sensitivity-bits 8,16`` adds int16),
on the monolithic graph and on stage 1 (which holds the first exit's head:
the covariance head of a DMPO model).

Writes ``benchmarks/results/quantization_analysis[_NAME].json`` and the
same tables as ``.md``; ``--markdown`` prints the tables of an existing JSON.
Exports go to ``--work-dir`` (removed unless ``--keep``).
"""

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

from keras_dmpo.atomic_io import write_bytes_atomic, write_json_atomic  # noqa: E402
from keras_dmpo.export import quantization_report as report  # noqa: E402
from keras_dmpo.litert.manifest import CONVERTER_QUANTIZATIONS, QUANTIZER_RECIPES  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODES = CONVERTER_QUANTIZATIONS + QUANTIZER_RECIPES
VALIDATED_MODES = ("static_int8", "mixed")
# The tiny DINOv2-like model: keras-hub's DINOv2 at toy size (2 register
# tokens, random LayerScale), DMPO heads (bypass, covariance head at exit 1),
# ImageNet input normalisation as the real preset has.
TINY_DINOV2 = dict(
    patch_size=8,
    num_layers=4,
    hidden_dim=64,
    num_heads=2,
    intermediate_dim=128,
    image_shape=(32, 32, 3),
    position_embedding_shape=(48, 48, 3),
    num_register_tokens=2,
    layer_scale_init_value=0.5,
    use_mask_token=False,
)


def log(message):
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def tiny_dinov2(num_calibration, num_test, seed=0):
    """A random DINOv2-like EarlyExitModel (exits 2 and 4) and random images."""
    import keras
    import keras_hub

    from keras_dmpo import DMPOClassifier, EarlyExitModel
    from keras_dmpo.policy import rule

    keras.utils.set_random_seed(seed)
    backbone = keras_hub.models.DINOV2Backbone(**TINY_DINOV2)
    rng = np.random.default_rng(seed)
    for layer in backbone.encoder.layers:
        for scale in (layer.layer_scale1, layer.layer_scale2):
            scale.lambda1.assign(rng.uniform(0.2, 1.0, (TINY_DINOV2["hidden_dim"],)))
    model = DMPOClassifier(backbone, num_classes=5, exits=[2, 4], input_normalization="imagenet")
    images = rng.uniform(size=(num_calibration + num_test,) + TINY_DINOV2["image_shape"]).astype("float32")
    ee = EarlyExitModel(model)
    # Half the test images leave at exit 1 (a threshold between two observed scores).
    scores = np.sort(rule.exit_scores(ee.exit_probabilities(images[num_calibration:])[0], ee.criterion))
    middle = len(scores) // 2
    ee.thresholds = [float(scores[middle - 1] + scores[middle]) / 2, 0.0]
    note = f"random DINOV2Backbone({TINY_DINOV2}), DMPOClassifier(5 classes, exits [2, 4]), uniform random images"
    return ee, images[:num_calibration], images[num_calibration:], note


def saved_model(path, data, num_calibration, num_test):
    from keras_dmpo import EarlyExitModel
    from keras_dmpo.datasets import load_data

    ee = EarlyExitModel.load(path, compile=False)
    splits = load_data(data, ee.model.image_shape)
    rng = np.random.default_rng(0)  # a random subset: a folder is read class by class
    train, test = splits["train"][0], splits["test"][0]
    calibration = train[np.sort(rng.choice(len(train), min(num_calibration, len(train)), replace=False))]
    test = test[:num_test]
    return ee, np.asarray(calibration, "float32"), np.asarray(test, "float32"), f"{path} on {data}"


def measure_mode(ee, mode, directory, calibration, test, expected, last_exit):
    from keras_dmpo.litert import StagedRuntime

    start = time.perf_counter()
    manifest = ee.export_tflite(directory, quantization=mode, representative_data=calibration, overwrite=True)
    export_s = time.perf_counter() - start
    runtime = StagedRuntime(directory)
    out = runtime.predict(test)
    mono = runtime.predict_monolithic(test)
    same = out["exit_index"] == expected["exit_index"]
    row = {
        "mode": mode or "float32",
        "export_s": round(export_s, 1),
        "stage_bytes": [s["size_bytes"] for s in manifest["stages"]],
        "monolithic_bytes": manifest["monolithic"]["size_bytes"],
        "same_exit": float(np.mean(out["exit_index"] == expected["exit_index"])),
        "same_label": float(np.mean(out["labels"] == expected["labels"])),
        # Over the images answered at the same exit (another exit's probabilities differ anyway).
        "max_abs_probability_diff": float(
            np.abs(out["probabilities"] - expected["probabilities"])[same].max()
        )
        if same.any()
        else None,
        "monolithic_same_label": float(np.mean(mono["labels"] == last_exit.argmax(-1))),
        "recipe_rules": len(manifest.get("quantization_recipe") or []),
    }
    log(
        f"{row['mode']}: {sum(row['stage_bytes']) / 1024:.0f} KB staged, same exit {row['same_exit']:.3f}, "
        f"same label {row['same_label']:.3f}, max |dp| {_fmt(row['max_abs_probability_diff'], 3)} ({export_s:.0f} s)"
    )
    return row


def read_graph(directory, name="monolithic.tflite"):
    with open(os.path.join(directory, name), "rb") as handle:
        return handle.read()


def analyse(args):
    work_dir = args.work_dir or tempfile.mkdtemp(prefix="keras_dmpo_quantization_")
    if args.tiny_dinov2:
        ee, calibration, test, note = tiny_dinov2(args.calibration_images, args.test_images)
    else:
        ee, calibration, test, note = saved_model(
            args.model, args.data, args.calibration_images, args.test_images
        )
    log(f"model: {note}; {len(calibration)} calibration, {len(test)} test images")
    expected = ee.predict(test)
    last_exit = ee.exit_probabilities(test)[-1]
    modes = [None if m == "float32" else m for m in args.modes.split(",")] if args.modes else list(MODES)
    directories = {m or "float32": os.path.join(work_dir, m or "float32") for m in modes}
    rows = [
        measure_mode(ee, m, directories[m or "float32"], calibration, test, expected, last_exit)
        for m in modes
    ]

    float_graph = read_graph(directories["float32"]) if "float32" in directories else None
    result = {
        "model": note,
        "calibration_images": len(calibration),
        "test_images": len(test),
        "load_average": list(os.getloadavg()),
        "modes": rows,
        "op_types": report.op_type_counts(float_graph) if float_graph else None,
        "validation": {},
        "sensitivity": {},
    }
    if float_graph is not None:
        sample = test[: args.validation_images]
        for mode in (m for m in VALIDATED_MODES if m in directories):
            errors = report.tensor_errors(float_graph, read_graph(directories[mode]), sample)
            result["validation"][mode] = report.errors_by_op_type(float_graph, errors)
            log(f"validated {mode} per tensor on {len(sample)} images")
        # The monolithic graph has the last exit's head only; stage 1 holds
        # the first exit's (the covariance head and bypass of a DMPO model).
        graphs = {"monolithic": float_graph, "stage_1": read_graph(directories["float32"], "stage_1.tflite")}
        for bits in (int(b) for b in args.sensitivity_bits.split(",") if b):
            for graph_name, graph in graphs.items():
                start = time.perf_counter()
                result["sensitivity"][f"{graph_name} int{bits}"] = report.op_type_sensitivity(
                    graph, calibration, test, activation_bits=bits
                )
                log(f"sensitivity of {graph_name}, int{bits}, in {time.perf_counter() - start:.0f} s")
    if not args.keep and not args.work_dir:
        shutil.rmtree(work_dir, ignore_errors=True)
    return result


def _fmt(value, digits=1):
    if value is None:
        return "—"
    if isinstance(value, float) and not np.isfinite(value):
        return "∞"
    return f"{value:.{digits}f}"


def markdown(result):
    lines = [
        f"Model: {result['model']}; {result['calibration_images']} calibration, "
        f"{result['test_images']} test images.",
        "",
        "| mode | stage files KB | monolithic KB | same exit | same label | max abs Δp (same exit) | monolithic same label | export s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in result["modes"]:
        stages = " + ".join(f"{b / 1024:.0f}" for b in row["stage_bytes"])
        lines.append(
            f"| {row['mode']} | {stages} | {row['monolithic_bytes'] / 1024:.0f} | {row['same_exit']:.3f} | "
            f"{row['same_label']:.3f} | {_fmt(row['max_abs_probability_diff'], 3)} | "
            f"{row['monolithic_same_label']:.3f} | {row['export_s']:.0f} |"
        )
    if result.get("op_types"):
        lines += [
            "",
            "Op types of the monolithic graph: "
            + ", ".join(f"{k} {v}" for k, v in result["op_types"].items()),
        ]
    for mode, rows in result["validation"].items():
        lines += [
            "",
            f"Per-tensor validation of {mode} (monolithic graph), per op type; drop = worst input SNR − output "
            f"SNR; breaks = ops whose inputs were ≥ {report.CLEAN_DB:.0f} dB and whose output is not:",
            "",
            "| op | count | breaks | median output SNR dB | worst output SNR dB | median drop dB | max drop dB | "
            "op of the max drop (scope) |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for row in rows:
            lines.append(
                f"| {row['op']} | {row['count']} | {row['breaks']} | {_fmt(row['median_output_snr_db'])} | "
                f"{_fmt(row['worst_output_snr_db'])} | {_fmt(row['median_drop_db'])} | {_fmt(row['max_drop_db'])} | "
                f"`{row['worst_scope']}` |"
            )
    for key, rows in result["sensitivity"].items():
        graph, bits = key.split(" ")
        lines += [
            "",
            f"Sensitivity: one group alone in static {bits} activations (int8 weights), the rest float "
            f"({graph} graph, test images):",
            "",
            "| group | ops | probabilities SNR dB | max abs Δp | same label |",
            "|---|---|---|---|---|",
        ]
        for row in rows:
            if not row["quantized"]:
                lines.append(f"| {row['group']} | {row['ops']} | not quantized | — | — |")
                continue
            lines.append(
                f"| {row['group']} | {row['ops']} | {_fmt(row.get('probabilities_snr_db'))} | "
                f"{_fmt(row.get('max_abs_probability_diff'), 3)} | {_fmt(row.get('same_label'), 3)} |"
            )
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--tiny-dinov2", action="store_true", help="a small random DINOv2-like model")
    source.add_argument("--model", help="a saved EarlyExitModel (.keras, with its thresholds)")
    source.add_argument("--markdown", metavar="JSON", help="print the tables of an existing result and exit")
    parser.add_argument("--data", help="with --model: a named data set or a class-per-folder directory")
    parser.add_argument("--name", default=None, help="results file suffix (quantization_analysis_NAME.json)")
    parser.add_argument("--modes", default="", help="comma-separated modes (float32 first); default all")
    parser.add_argument("--calibration-images", type=int, default=200)
    parser.add_argument("--test-images", type=int, default=256)
    parser.add_argument(
        "--validation-images", type=int, default=32, help="images for the per-tensor validation"
    )
    parser.add_argument(
        "--sensitivity-bits", default="8", help="activation bits of the sensitivity runs, e.g. 8,16"
    )
    parser.add_argument("--work-dir", default=None, help="keep the exports here")
    parser.add_argument("--keep", action="store_true", help="keep the temporary work directory")
    args = parser.parse_args(argv)
    if args.markdown:
        with open(args.markdown) as handle:
            print(markdown(json.load(handle)), end="")
        return 0
    if args.model and not args.data:
        parser.error("--model needs --data (its calibration and test images)")
    if args.modes and args.modes.split(",")[0] != "float32":
        parser.error("--modes must start with float32 (the reference graph of the op-level analysis)")
    result = analyse(args)
    name = args.name or ("tiny_dinov2" if args.tiny_dinov2 else None)
    stem = os.path.join(ROOT, "benchmarks", "results", "quantization_analysis" + (f"_{name}" if name else ""))
    write_json_atomic(stem + ".json", result)
    write_bytes_atomic(stem + ".md", markdown(result).encode("utf-8"))
    print(markdown(result), end="")
    log(f"wrote {stem}.json and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
