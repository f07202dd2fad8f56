"""Why one stage graph runs slower than another of the same FLOPs: batch-1
LiteRT time, achieved GFLOP/s and XNNPACK delegation of every stage.

Usage (the ViT-B/16 table in docs/export.md):

    KERAS_BACKEND=tensorflow python benchmarks/stage_profile.py --config vit_b16

``vit_b16``: a random keras-hub ``ViTBackbone`` in the ViT-B/16 configuration
(224 px, patch 16, 12 blocks of width 768, 12 heads, MLP 3072) with a
``DMPOClassifier`` of 1,000 classes and exits at blocks 3, 6, 9 and 12 (the
model's default heads: covariance at the early exits, bypass). ``tiny``: the
same at toy size, for a smoke run. ``--model`` profiles a saved
``EarlyExitModel`` instead.

Exports float32 stage graphs (dynamic batch, as ``StagedRuntime`` on a phone
uses them) and, with ``--fixed-batch``, batch-1 graphs too (``web=True``);
for each, on every thread count: each stage's median batch-1 invoke
(``StagedRuntime.stage_latency``), its GFLOP/s and its fraction of the
median stage's, and ``quantization_report.xnnpack_delegation`` of each stage
(partitions, ops left to LiteRT's kernels). Writes
``benchmarks/results/stage_profile_NAME.json`` and ``.md``.
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

from keras_dmpo.atomic_io import write_bytes_atomic, write_json_atomic  # noqa: E402
from keras_dmpo.export import quantization_report  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = {
    "vit_b16": dict(
        backbone=dict(
            image_shape=(224, 224, 3),
            patch_size=16,
            num_layers=12,
            num_heads=12,
            hidden_dim=768,
            mlp_dim=3072,
        ),
        num_classes=1000,
        exits=[3, 6, 9, 12],
    ),
    "tiny": dict(
        backbone=dict(
            image_shape=(32, 32, 3), patch_size=8, num_layers=4, num_heads=2, hidden_dim=32, mlp_dim=64
        ),
        num_classes=5,
        exits=[1, 2, 3, 4],
    ),
}


def log(message):
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def build(args):
    import keras
    import keras_hub

    from keras_dmpo import DMPOClassifier, EarlyExitModel

    if args.model:
        return EarlyExitModel.load(args.model, compile=False), args.model
    config = CONFIGS[args.config]
    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.ViTBackbone(**config["backbone"])
    model = DMPOClassifier(backbone, num_classes=config["num_classes"], exits=config["exits"])
    return EarlyExitModel(model), f"random ViTBackbone({config['backbone']}), DMPOClassifier{config['exits']}"


def profile(directory, threads, repeats):
    from keras_dmpo.litert import StagedRuntime

    runtime = StagedRuntime(directory, num_threads=threads)
    ms = runtime.stage_latency(batch_size=1, repeats=repeats, warmup=5)
    flops = np.diff(np.concatenate([[0.0], runtime.flops_per_exit]))
    rates = [flops[k] / ms[f"stage_{k + 1}"] / 1e6 for k in range(len(flops))]
    median = float(np.median(rates))
    return {
        "num_threads": threads,
        "monolithic_ms": ms.get("monolithic"),
        "stages": [
            {
                "stage": k + 1,
                "gflop": float(flops[k] / 1e9),
                "ms": ms[f"stage_{k + 1}"],
                "gflops_per_s": rates[k],
                "fraction_of_median_stage": rates[k] / median,
            }
            for k in range(len(flops))
        ],
    }


def analyse(args):
    ee, note = build(args)
    log(f"model: {note}")
    work_dir = args.work_dir or tempfile.mkdtemp(prefix="keras_dmpo_stage_profile_")
    # Exports are re-used only for the same model.
    note_path = os.path.join(work_dir, "model.txt")
    if os.path.isfile(note_path):
        with open(note_path) as handle:
            if handle.read() != note:
                raise SystemExit(
                    f"--work-dir {work_dir} holds the exports of another model; give another one"
                )
    else:
        os.makedirs(work_dir, exist_ok=True)
        with open(note_path, "w") as handle:
            handle.write(note)
    kinds = [("dynamic batch", False)] + ([("batch 1", True)] if args.fixed_batch else [])
    result = {"model": note, "load_average_start": list(os.getloadavg()), "exports": []}
    for kind, web in kinds:
        directory = os.path.join(work_dir, "batch1" if web else "dynamic")
        if not os.path.isfile(os.path.join(directory, "manifest.json")):
            start = time.perf_counter()
            ee.export_tflite(directory, web=web)
            log(f"exported {kind} graphs in {time.perf_counter() - start:.0f} s")
        if args.export_only:
            continue
        entry = {"graphs": kind, "delegation": [], "timing": []}
        for k in range(ee.num_exits):
            with open(os.path.join(directory, f"stage_{k + 1}.tflite"), "rb") as handle:
                entry["delegation"].append(quantization_report.xnnpack_delegation(handle.read()))
        for threads in args.threads:
            entry["timing"].append(profile(directory, threads, args.repeats))
            stages = entry["timing"][-1]["stages"]
            log(
                f"{kind}, {threads} thread(s): "
                + ", ".join(
                    f"stage {s['stage']} {s['ms']:.1f} ms ({s['gflops_per_s']:.0f} GFLOP/s)" for s in stages
                )
            )
        result["exports"].append(entry)
    result["load_average_end"] = list(os.getloadavg())
    return result


def markdown(result):
    lines = [
        f"Model: {result['model']}. Load average at start "
        f"{', '.join(f'{x:.2f}' for x in result['load_average_start'])}, at the end "
        f"{', '.join(f'{x:.2f}' for x in result['load_average_end'])}.",
        "",
        "| graphs | threads | stage | GFLOP | ms | GFLOP/s | ÷ median stage | XNNPACK partitions | ops outside XNNPACK |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for entry in result["exports"]:
        for timing in entry["timing"]:
            for s, d in zip(timing["stages"], entry["delegation"]):
                outside = quantization_report.fallback_summary(d)
                lines.append(
                    f"| {entry['graphs']} | {timing['num_threads']} | {s['stage']} | {s['gflop']:.3f} | {s['ms']:.2f} | "
                    f"{s['gflops_per_s']:.0f} | {s['fraction_of_median_stage']:.2f} | {d['partitions']} | {outside} |"
                )
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", choices=sorted(CONFIGS), default="vit_b16")
    parser.add_argument("--model", default=None, help="a saved EarlyExitModel instead of --config")
    parser.add_argument("--fixed-batch", action="store_true", help="also batch-1 graphs (web=True)")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--work-dir", default=None, help="exports (re-used when there)")
    parser.add_argument(
        "--export-only",
        action="store_true",
        help="export into --work-dir and stop (time later, on an idle machine)",
    )
    parser.add_argument("--name", default=None, help="results suffix (default: the config)")
    parser.add_argument("--markdown", metavar="JSON", help="print the table of an existing result and exit")
    args = parser.parse_args(argv)
    if args.markdown:
        with open(args.markdown) as handle:
            print(markdown(json.load(handle)), end="")
        return 0
    args.threads = [int(t) for t in args.threads.split(",")]
    if args.export_only and not args.work_dir:
        parser.error("--export-only needs --work-dir (where a later run finds the exports)")
    result = analyse(args)
    if args.export_only:
        return 0
    name = args.name or (os.path.splitext(os.path.basename(args.model))[0] if args.model else args.config)
    stem = os.path.join(ROOT, "benchmarks", "results", f"stage_profile_{name}")
    write_json_atomic(stem + ".json", result)
    write_bytes_atomic(stem + ".md", markdown(result).encode("utf-8"))
    print(markdown(result), end="")
    log(f"wrote {stem}.json and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
