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

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from keras_dmpo import archives, image_folders  # noqa: E402
from keras_dmpo.atomic_io import write_json_atomic  # noqa: E402

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


def arrays_epoch(preset, folder, batch_size, count):
    """One training epoch of the same model on the same images held as
    arrays (the first ``count``): images per second of ``fit`` alone."""
    import keras

    from keras_dmpo import DMPOClassifier
    from keras_dmpo.image_batches import ImageBatches

    paths, labels, names = image_folders.list_class_folder(folder)
    order = np.random.default_rng(0).permutation(len(paths))[:count]
    x = image_folders.read_image_files(paths[order], TINY_224["image_shape"])
    y = labels[order]
    result = {}
    for kind, data in (
        ("arrays", dict(x=x, y=y, batch_size=batch_size, shuffle=True)),
        ("stream", dict(x=ImageBatches(paths[order], y, TINY_224["image_shape"], batch_size, shuffle=True))),
    ):
        keras.utils.set_random_seed(0)
        model = DMPOClassifier.from_preset(preset, num_classes=len(names), exits=[1, 2])
        model.compile(optimizer="adamw")
        model.fit(**data, epochs=1, verbose=0, steps_per_epoch=2)  # compile
        start = time.perf_counter()
        model.fit(**data, epochs=1, verbose=0)
        result[f"{kind}_images_per_second"] = round(count / (time.perf_counter() - start), 1)
    result["stream_vs_arrays"] = round(
        result["stream_images_per_second"] / result["arrays_images_per_second"], 3
    )
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=20000)
    parser.add_argument("--data-root", default=os.path.join(ROOT, "..", "shared", "data"))
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--arrays-images", type=int, default=4000, help="images of the arrays comparison")
    parser.add_argument("--no-arrays", action="store_true", help="skip the arrays comparison")
    args = parser.parse_args()
    archive = os.path.join(args.data_root, "cifar10-jpeg.tar.gz")
    if not os.path.exists(archive):
        sys.exit(f"no {archive}: pass --data-root, the folder holding cifar10-jpeg.tar.gz")
    source = os.path.join(archives.unpack_archive(archive), "train")
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
            record["fit_throughput"] = arrays_epoch(
                preset, folder, args.batch_size, min(count, args.arrays_images)
            )
            print(record["fit_throughput"])
    path = os.path.join(ROOT, "benchmarks", "results", "data_scale", f"{count}.json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    write_json_atomic(path, record)
    print("wrote", path)


if __name__ == "__main__":
    main()
