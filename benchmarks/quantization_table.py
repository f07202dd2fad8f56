"""The quantization table of a tuned model on its own data: per export mode,
accuracy at FLOPs budgets against float, agreement, sizes, batch-1 latency and
achieved GFLOP/s.

Usage (the DINOv2-S table in docs/export.md; the model is the photo
benchmark's clothing DMPO run, saved with ``--save-models``):

    KERAS_BACKEND=torch python benchmarks/dmpo_benchmark.py --profile dinov2 --datasets clothing \\
        --methods dmpo --seeds 0 --results-dir /tmp/runs --save-models /tmp/models
    KERAS_BACKEND=tensorflow python benchmarks/quantization_table.py \\
        --model /tmp/models/clothing_dmpo_seed0.keras --dataset clothing

The data are the benchmark's splits of ``--dataset`` (``dmpo_bench.data``,
data seed 0: for clothing 1,500 training, 500 validation and 1,781 test
photos): the representative images of the calibrating modes are
``--calibration-images`` training photos, the thresholds are calibrated on the
validation photos, accuracy is measured on the test photos.

Per mode (float32; the converter's float16, dynamic and int8; the LiteRT
quantizer's recipes, ``int8_matmuls`` among them; and ``mixed_int16``, a recipe
of rules: static int8 with the ops that break int8 in int16 instead of
float), with
``StagedRuntime.exit_probabilities`` on every validation and test photo:

- at each budget (``--budgets``, default 30% and 50% of the full model's
  FLOPs), test accuracy and FLOPs with the float Keras model's thresholds
  and with thresholds calibrated again on the mode's own validation outputs,
  and the fraction of test photos answered at the same exit and with the
  same label as float Keras (float thresholds);
- the monolithic graph's and the last exit's test accuracy;
- stage and monolithic file sizes, and their ratio to float32's;
- batch-1 LiteRT time of every stage and of the monolithic graph on 1 and 2
  threads, their achieved GFLOP/s against this machine's matmul peaks
  (``machine_peak.py``, measured in the same run), and the expected batch-1
  time per photo at each budget (the exit fractions times the cumulative
  stage times).

Exports and per-mode rows are kept in ``--work-dir`` (default: a folder named
after the model under the system's temporary directory) and re-used, so a
stopped run goes on from the next mode; give another ``--work-dir`` after
retraining the model at the same path.
Writes ``benchmarks/results/quantization_table_NAME.json`` and ``.md``.
"""

import argparse
import json
import os
import sys
import tempfile
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
from dmpo_bench import profiles  # noqa: E402
from dmpo_bench.data import load_split  # noqa: E402
from machine_peak import achieved_table, machine_peaks  # noqa: E402

from keras_dmpo import policy  # noqa: E402
from keras_dmpo.atomic_io import write_bytes_atomic, write_json_atomic  # noqa: E402
from keras_dmpo.export import quantization_report, quantizer  # noqa: E402
from keras_dmpo.policy import record  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The int16 modes run LiteRT's int16 kernels, ~20x slower than float32 on
# this CPU: measured apart, on a subset (--modes float32,mixed_int16
# --test-images 500).
DEFAULT_MODES = (
    "float32,float16,dynamic_int8,weight_only_int8,dynamic_int4_blockwise,int8,static_int8,mixed,int8_matmuls"
)
# The ops that break static int8 in a ViT (docs/export.md): what "mixed"
# keeps in float, given 16-bit activations instead, so every activation is
# an integer.
MIXED_INT16 = (
    quantizer.RECIPES["mixed"][:1]
    + [quantizer.static_rule(16, operation=op) for op in ("SOFTMAX", "GELU", "RSQRT")]
    + [
        quantizer.static_rule(16, regex=quantizer.LAYER_NORM_SCOPE),
        quantizer.static_rule(16, regex=quantizer.COVARIANCE_SCOPE),
    ]
)
RECIPES_OF_RULES = {"mixed_int16": MIXED_INT16}


def log(message):
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def load(args):
    from keras_dmpo import EarlyExitModel

    ee = EarlyExitModel.load(args.model, compile=False)
    sizes = dict(profiles.DINOV2.data[args.dataset]["full"])
    data = load_split(args.dataset, sizes, args.data_seed, ee.model.image_shape, data_root=args.data_root)
    return ee, data


def calibrated(probabilities, labels, flops, full, budgets):
    """The policies of ``budgets``, searched as the photo benchmark searches
    them (all its budgets, from the smallest up, each starting from the
    previous one's thresholds), so a float row equals the benchmark's."""
    targets = sorted(set(profiles.BUDGETS) | set(budgets))
    found = policy.calibrate_many(probabilities, labels, flops, full, targets, skip_unreachable=True)
    by_budget = dict(zip(targets, found))
    return [by_budget[b] for b in budgets]


def budget_result(probabilities, labels, chosen_policy, reference_exits, reference_labels, flops, full):
    exit_index = chosen_policy.assign(probabilities)
    predicted = probabilities[exit_index, np.arange(len(labels))].argmax(-1)
    result = {
        "test_accuracy": float(np.mean(predicted == labels)),
        "test_fraction": record.expected_flops(exit_index, flops) / full,
        "exit_fractions": record.exit_fractions(exit_index, len(flops)),
        "thresholds": list(chosen_policy.thresholds),
    }
    if reference_exits is not None:
        result["same_exit"] = float(np.mean(exit_index == reference_exits))
        result["same_label"] = float(np.mean(predicted == reference_labels))
    return result, exit_index


def export(ee, mode, directory, representative, args):
    """The mode's export, re-used when ``export.json`` says it was made from
    the same model, recipe and calibration images; made again otherwise."""
    from keras_dmpo.litert import StagedRuntime

    quantization = RECIPES_OF_RULES.get(mode, None if mode == "float32" else mode)
    made_from = {
        "model": os.path.abspath(args.model),
        "quantization": quantization,
        "dataset": args.dataset,
        "data_seed": args.data_seed,
        "calibration_images": args.calibration_images,
    }
    record = os.path.join(directory, "export.json")
    if os.path.isfile(record):
        with open(record) as handle:
            if json.load(handle) == made_from:
                log(f"{mode}: re-using {directory}")
                return StagedRuntime(directory).manifest, None
    elif os.path.exists(directory) and os.listdir(directory):
        raise SystemExit(f"{directory} holds files this script did not write; give another --work-dir")
    start = time.perf_counter()
    manifest = ee.export_tflite(
        directory, quantization=quantization, representative_data=representative, overwrite=True
    )
    write_json_atomic(record, made_from)
    return manifest, time.perf_counter() - start


def measure(ee, mode, directory, data, representative, float_policies, keras_reference, args, peaks):
    """The mode's row; kept beside its export (``row.json``), so a stopped
    run goes on from the next mode."""
    saved = os.path.join(directory, "row.json")
    if os.path.isfile(saved):
        with open(saved) as handle:
            row = json.load(handle)
        if row.get("settings") == _settings(args, mode):
            log(f"{mode}: measured before ({saved})")
            if args.retime:
                row["latency"] = latency(directory, mode, row["budgets"], args, peaks)
                write_json_atomic(saved, row)
                log(f"{mode}: timed again")
            return row
    row = _measure(ee, mode, directory, data, representative, float_policies, keras_reference, args, peaks)
    row["settings"] = _settings(args, mode)
    write_json_atomic(saved, row)
    return row


def latency(directory, mode, budgets, args, peaks):
    """Per thread count: each graph's batch-1 time and GFLOP/s against the
    peaks, and the expected time per photo at each budget."""
    tables = []
    for threads in args.threads:
        table = achieved_table(directory, mode, peaks, threads, repeats=args.repeats)
        cumulative = np.cumsum([s["ms"] for s in table["stages"]])
        table["expected_ms_per_image"] = {
            str(b["budget"]): float(np.dot(b["own_thresholds"]["exit_fractions"], cumulative))
            for b in budgets
        }
        tables.append(table)
    return tables


def _settings(args, mode):
    return {
        "model": os.path.abspath(args.model),
        "dataset": args.dataset,
        "data_seed": args.data_seed,
        "budgets": args.budgets,
        "threads": args.threads,
        "calibration_images": args.calibration_images,
        "test_images": args.test_images,
        "repeats": args.repeats,
        "recipe": RECIPES_OF_RULES.get(mode),
    }


def _measure(ee, mode, directory, data, representative, float_policies, keras_reference, args, peaks):
    from keras_dmpo.litert import StagedRuntime

    manifest, export_s = export(ee, mode, directory, representative, args)
    (x_val, y_val), (x_test, y_test) = data["validation"], data["test"]
    runtime = StagedRuntime(directory, num_threads=args.threads[-1])
    flops, full = runtime.flops_per_exit, runtime.full_model_flops
    start = time.perf_counter()
    val_p = runtime.exit_probabilities(x_val, batch_size=args.batch_size)
    test_p = runtime.exit_probabilities(x_test, batch_size=args.batch_size)
    mono = runtime.predict_monolithic(x_test, batch_size=args.batch_size)["labels"]
    run_s = time.perf_counter() - start
    own_policies = calibrated(val_p, y_val, flops, full, args.budgets)
    row = {
        "mode": mode,
        "quantization": manifest.get("quantization"),
        "recipe_rules": len(manifest.get("quantization_recipe") or []),
        "export_s": None if export_s is None else round(export_s, 1),
        "evaluation_s": round(run_s, 1),
        "stage_bytes": [s["size_bytes"] for s in manifest["stages"]],
        "monolithic_bytes": manifest["monolithic"]["size_bytes"],
        "monolithic_test_accuracy": float(np.mean(mono == y_test)),
        "last_exit_test_accuracy": float(np.mean(test_p[-1].argmax(-1) == y_test)),
        "budgets": [],
    }
    for budget, float_policy, own_policy in zip(args.budgets, float_policies, own_policies):
        reference_exits, reference_labels = keras_reference[budget]
        with_float, _ = budget_result(
            test_p, y_test, float_policy, reference_exits, reference_labels, flops, full
        )
        with_own, own_exits = budget_result(
            test_p, y_test, own_policy, reference_exits, reference_labels, flops, full
        )
        row["budgets"].append({"budget": budget, "float_thresholds": with_float, "own_thresholds": with_own})
    # Which ops XNNPACK runs at batch 1 (the rest are LiteRT's own kernels).
    row["xnnpack"] = {}
    for graph in ("stage_1", "monolithic"):
        with open(os.path.join(directory, f"{graph}.tflite"), "rb") as handle:
            row["xnnpack"][graph] = quantization_report.xnnpack_delegation(handle.read())
    row["latency"] = latency(directory, mode, row["budgets"], args, peaks)
    b = row["budgets"][0]
    log(
        f"{mode}: {sum(row['stage_bytes']) / 2**20:.1f} MB staged, @{b['budget']:.0%} "
        f"{100 * b['float_thresholds']['test_accuracy']:.2f}% (float thresholds) / "
        f"{100 * b['own_thresholds']['test_accuracy']:.2f}% (own), same exit "
        f"{b['float_thresholds']['same_exit']:.3f}, monolithic {100 * row['monolithic_test_accuracy']:.2f}% "
        f"({run_s:.0f} s)"
    )
    return row


def analyse(args):
    ee, data = load(args)
    if args.test_images and args.test_images < len(data["test"][1]):
        # A seeded subset (the split is grouped by class) for the slow modes.
        keep = np.sort(np.random.default_rng(1).choice(len(data["test"][1]), args.test_images, replace=False))
        data["test"] = tuple(np.asarray(part)[keep] for part in data["test"])
    (x_train, _), (x_val, y_val), (x_test, y_test) = data["train"], data["validation"], data["test"]
    rng = np.random.default_rng(0)
    pick = np.sort(rng.choice(len(x_train), min(args.calibration_images, len(x_train)), replace=False))
    representative = np.asarray(x_train[pick], "float32")
    log(
        f"{args.model}: {len(representative)} calibration, {len(x_val)} validation, {len(x_test)} test images "
        f"({data.get('source')})"
    )
    val_k = ee.exit_probabilities(x_val)
    test_k = ee.exit_probabilities(x_test)
    flops, full = ee.flops_per_exit, ee.full_model_flops
    float_policies = calibrated(val_k, y_val, flops, full, args.budgets)
    for budget, float_policy in zip(args.budgets, float_policies):
        if float_policy is None:
            raise SystemExit(
                f"--budgets {budget}: below the first exit's cost ({flops[0] / full:.1%} of the full model's FLOPs)"
            )
    keras_rows, keras_reference = [], {}
    for budget, float_policy in zip(args.budgets, float_policies):
        result, exit_index = budget_result(test_k, y_test, float_policy, None, None, flops, full)
        keras_reference[budget] = (exit_index, test_k[exit_index, np.arange(len(y_test))].argmax(-1))
        keras_rows.append({"budget": budget, **result})
    log(
        "float Keras: "
        + ", ".join(f"@{r['budget']:.0%} {100 * r['test_accuracy']:.2f}%" for r in keras_rows)
        + f", last exit {100 * np.mean(test_k[-1].argmax(-1) == y_test):.2f}%"
    )
    peaks = machine_peaks(tuple(args.threads))
    rows = []
    for mode in args.modes:
        directory = os.path.join(args.work_dir, mode)
        rows.append(
            measure(ee, mode, directory, data, representative, float_policies, keras_reference, args, peaks)
        )
    return {
        "model": os.path.abspath(args.model),
        "dataset": args.dataset,
        "data_source": data.get("source"),
        "images": {"calibration": len(representative), "validation": len(x_val), "test": len(x_test)},
        "command": "KERAS_BACKEND={} python benchmarks/quantization_table.py {}".format(
            os.environ.get("KERAS_BACKEND"), " ".join(sys.argv[1:])
        ),
        "load_average": list(os.getloadavg()),
        "machine_peaks": peaks,
        "keras": {
            "last_exit_test_accuracy": float(np.mean(test_k[-1].argmax(-1) == y_test)),
            "budgets": keras_rows,
        },
        "recipes_of_rules": RECIPES_OF_RULES,
        "modes": rows,
    }


def _pct(value):
    return "—" if value is None else f"{100 * value:.2f}"


def markdown(result):
    keras = result["keras"]
    budgets = [r["budget"] for r in keras["budgets"]]
    float32 = next((r for r in result["modes"] if r["mode"] == "float32"), None)
    float_bytes = sum(float32["stage_bytes"]) if float32 else None
    lines = [
        f"Model `{os.path.basename(result['model'])}` on {result['dataset']} "
        f"({result['images']['calibration']} calibration, {result['images']['validation']} validation, "
        f"{result['images']['test']} test images); float Keras: "
        + ", ".join(f"{_pct(r['test_accuracy'])}% at {r['budget']:.0%}" for r in keras["budgets"])
        + f", last exit {_pct(keras['last_exit_test_accuracy'])}%. Load average at the end "
        f"{', '.join(f'{x:.2f}' for x in result['load_average'])}.",
        "",
        "| mode | staged MB (× float32) | "
        + " | ".join(f"@{b:.0%} float thr. | @{b:.0%} own thr. | @{b:.0%} same exit / label" for b in budgets)
        + " | monolithic | last exit |",
        "|---|---|" + "---|---|---|" * len(budgets) + "---|---|",
    ]
    for row in result["modes"]:
        size = sum(row["stage_bytes"])
        ratio = f" ({size / float_bytes:.2f})" if float_bytes else ""
        cells = []
        for b in row["budgets"]:
            f, o = b["float_thresholds"], b["own_thresholds"]
            cells += [
                f"{_pct(f['test_accuracy'])}",
                f"{_pct(o['test_accuracy'])} ({100 * o['test_fraction']:.1f}%)",
                f"{f['same_exit']:.3f} / {f['same_label']:.3f}",
            ]
        lines.append(
            f"| {row['mode']} | {size / 2**20:.1f}{ratio} | "
            + " | ".join(cells)
            + f" | {_pct(row['monolithic_test_accuracy'])} | {_pct(row['last_exit_test_accuracy'])} |"
        )
    peaks = result["machine_peaks"]
    lines += [
        "",
        "Batch-1 LiteRT per mode and thread count: monolithic ms and GFLOP/s, the expected ms per photo at "
        "each budget (own thresholds), the stages' GFLOP/s (slowest / median) and the monolithic graph's "
        "rate over this machine's matmul rate measured in the same run (numpy's BLAS and torch's int8 matmul "
        f"at 2048², a library's rate, not an upper bound: float32 {', '.join(f'{v:.0f}' for v in peaks['float32'].values())} "
        f"GFLOP/s, int8 {', '.join(f'{v:.0f}' for v in peaks['int8'].values() if v)} GOP/s on "
        f"{', '.join(peaks['float32'])} threads):",
        "",
        "| mode | threads | monolithic ms | "
        + " | ".join(f"@{b:.0%} ms" for b in budgets)
        + " | monolithic GFLOP/s | stage GFLOP/s min / median | of float32 peak | of int8 peak |",
        "|---|---|---|" + "---|" * len(budgets) + "---|---|---|---|",
    ]
    for row in result["modes"]:
        for t in row["latency"]:
            rates = [s["gflops_per_s"] for s in t["stages"]]
            int8 = t["monolithic_fraction_of_int8_peak"]
            lines.append(
                f"| {row['mode']} | {t['num_threads']} | {t['monolithic_ms']:.1f} | "
                + " | ".join(f"{t['expected_ms_per_image'][str(b)]:.1f}" for b in budgets)
                + f" | {t['monolithic_gflops_per_s']:.0f} | {min(rates):.0f} / {t['median_stage_gflops_per_s']:.0f}"
                f" | {t['monolithic_fraction_of_float32_peak']:.2f} | {'—' if int8 is None else f'{int8:.2f}'} |"
            )
    lines += [
        "",
        "Ops that LiteRT's XNNPACK delegate leaves to LiteRT's own kernels (batch 1), per graph: "
        "partitions, ops in XNNPACK / outside, and the op types outside (count):",
        "",
        "| mode | graph | partitions | in XNNPACK / outside | outside XNNPACK |",
        "|---|---|---|---|---|",
    ]
    for row in result["modes"]:
        for graph, report in row.get("xnnpack", {}).items():
            lines.append(
                f"| {row['mode']} | {graph} | {report['partitions']} | {report['delegated']} / "
                f"{report['not_delegated']} | {quantization_report.fallback_summary(report)} |"
            )
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="a saved EarlyExitModel (.keras)")
    parser.add_argument("--dataset", default="clothing", choices=profiles.PHOTO_DATASETS)
    parser.add_argument("--data-root", default=None, help=f"default {profiles.DEFAULT_DATA_ROOT}")
    parser.add_argument("--data-seed", type=int, default=0)
    parser.add_argument("--modes", default=DEFAULT_MODES, help="comma list, float32 first")
    parser.add_argument("--budgets", default="0.3,0.5", help="comma list of FLOPs fractions")
    parser.add_argument("--calibration-images", type=int, default=200)
    parser.add_argument(
        "--test-images", type=int, default=None, help="a seeded subset of the test photos (default: all)"
    )
    parser.add_argument("--threads", default="1,2", help="comma list of LiteRT thread counts")
    parser.add_argument("--batch-size", type=int, default=32, help="photos per LiteRT call (accuracy runs)")
    parser.add_argument("--repeats", type=int, default=50, help="timed invokes per graph")
    parser.add_argument(
        "--retime",
        action="store_true",
        help="time the graphs of modes measured before again (their accuracy is kept): for an idle machine",
    )
    parser.add_argument("--work-dir", default=None, help="exports and rows (default: see above)")
    parser.add_argument("--name", default=None, help="results suffix (default: the data set)")
    parser.add_argument("--markdown", metavar="JSON", help="print the tables of an existing result and exit")
    args = parser.parse_args(argv)
    if args.markdown:
        with open(args.markdown) as handle:
            print(markdown(json.load(handle)), end="")
        return 0
    if not args.model:
        parser.error("--model is required (or --markdown JSON)")
    if args.work_dir is None:
        stem = os.path.splitext(os.path.basename(args.model))[0]
        args.work_dir = os.path.join(tempfile.gettempdir(), f"keras_dmpo_quantization_table_{stem}")
    args.modes = args.modes.split(",")
    if args.modes[0] != "float32":
        parser.error(
            f"--modes must start with float32 (the reference of the size ratios); got {args.modes[0]!r}"
        )
    args.budgets = [float(b) for b in args.budgets.split(",")]
    args.threads = [int(t) for t in args.threads.split(",")]
    result = analyse(args)
    stem = os.path.join(ROOT, "benchmarks", "results", f"quantization_table_{args.name or args.dataset}")
    write_json_atomic(stem + ".json", result)
    write_bytes_atomic(stem + ".md", markdown(result).encode("utf-8"))
    print(markdown(result), end="")
    log(f"wrote {stem}.json and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
