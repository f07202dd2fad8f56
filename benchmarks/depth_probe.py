"""Per-block linear probe of a frozen backbone: does depth buy accuracy?

For every block of the backbone: LayerNorm (no parameters) of each token, then
the class token concatenated with the mean patch token, standardised, and a
multinomial logistic regression (scikit-learn, L2, C=1) fitted on the training
images and scored on the test images. Run for the real DINOv2-S/14
(``dinov2_small_imgfocus``) and for random weights of the same configuration
(keras-hub's initialisers, seed 0): the difference is what pre-training buys
at each depth. Images in [0, 1], ImageNet-normalised, grey repeated to RGB.

Usage (docs/data.md's depth-probe table was made with; the photo sets:
``--datasets cifar10,clothing``, on the benchmark's own splits):

    KERAS_BACKEND=tensorflow .venv/bin/python benchmarks/depth_probe.py

Each (data set, backbone) run writes its own JSON in
``benchmarks/results/depth_probe/`` and is skipped when that file exists
(``--force`` to redo), so an interrupted run resumes; ``--report`` prints the
markdown table from the files.
"""

import argparse
import glob
import json
import os
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402

from keras_dmpo.atomic_io import write_json_atomic  # noqa: E402
from keras_dmpo.preset_catalog import DINOV2_BENCHMARK_IMAGE_SIZE  # noqa: E402

RESULTS = os.path.join(ROOT, "benchmarks", "results", "depth_probe")
PRESET = "dinov2_small_imgfocus"
MEAN = np.array([0.485, 0.456, 0.406], "float32")
STD = np.array([0.229, 0.224, 0.225], "float32")


def log(message):
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def load_benchmark_splits(dataset, size, data_root):
    """The DINOv2 benchmark's own splits of a photo set (same images, same
    seed), so the probe and the tuned models are compared on one test set."""
    from dmpo_bench.data import load_split
    from dmpo_bench.profiles import DINOV2

    sizes = DINOV2.data[dataset]["full"]
    data = load_split(dataset, sizes, 0, (size, size, 3), data_root=data_root)
    return data["train"], data["validation"], data["test"]


def load(dataset, size, train_size, test_size, data_root=None):
    from keras_dmpo import datasets

    if dataset in ("cifar10", "clothing"):
        return load_benchmark_splits(dataset, size, data_root)
    if dataset == "fashion_mnist":
        data = datasets.load_fashion_mnist(
            image_size=size,
            channels=3,
            validation_size=1000,
            seed=0,
            train_size=train_size,
            test_size=test_size,
        )
    else:
        data = datasets.load_digits(image_size=size, channels=3, seed=0)
        data["train"] = tuple(np.concatenate(parts) for parts in zip(data["train"], data["validation"]))
    return data["train"], None, data["test"]


def backbone_for(kind, size):
    import keras
    import keras_hub

    from keras_dmpo.models.vit_stages import load_vit_backbone

    real = load_vit_backbone(PRESET, image_shape=(size, size, 3))
    if kind == "pretrained":
        return real
    keras.utils.set_random_seed(0)
    config = real.get_config()
    config.pop("name", None)
    return keras_hub.models.DINOV2Backbone.from_config(config)


def block_features(backbone, images, batch_size):
    """``(num_blocks, N, 2 * width)``: LN'd class token and mean patch token."""
    import keras

    from keras_dmpo.models.vit_stages import ViTStages

    stages = ViTStages(backbone, exits=list(range(1, backbone.num_layers + 1)))
    inputs = keras.Input(stages.image_shape)
    tokens = stages.embed(inputs)
    outputs = []
    for index in range(stages.num_layers):
        tokens = stages.call_block(index, tokens)
        outputs.append(tokens)
    model = keras.Model(inputs, outputs)
    prefix = stages.num_prefix_tokens
    chunks = []
    for start in range(0, len(images), batch_size):
        batch = (images[start : start + batch_size] - MEAN) / STD
        per_block = [keras.ops.convert_to_numpy(t) for t in model(batch)]
        rows = []
        for t in per_block:
            t = (t - t.mean(-1, keepdims=True)) / np.sqrt(t.var(-1, keepdims=True) + 1e-6)
            rows.append(np.concatenate([t[:, 0], t[:, prefix:].mean(1)], axis=-1))
        chunks.append(np.stack(rows))
    return np.concatenate(chunks, axis=1)


def probe(train_features, y_train, eval_sets):
    """Per block, a probe fitted on the training features; its accuracy on
    each ``(features, labels)`` of ``eval_sets`` (lists, one per set)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    accuracies = [[] for _ in eval_sets]
    for block, f_train in enumerate(train_features):
        scaler = StandardScaler().fit(f_train)
        classifier = LogisticRegression(C=1.0, max_iter=2000)
        classifier.fit(scaler.transform(f_train), y_train)
        for out, (features, labels) in zip(accuracies, eval_sets):
            out.append(float(classifier.score(scaler.transform(features[block]), labels)))
    return accuracies


def run(dataset, kind, args):
    # The default sizes keep the original file names; other sizes get their own file.
    if dataset in ("cifar10", "clothing"):
        sizes = "_benchmark_splits"
    else:
        sizes = (
            ""
            if (args.train_size, args.test_size) == (2000, 1000)
            else f"_{args.train_size}x{args.test_size}"
        )
    path = os.path.join(RESULTS, f"{dataset}_{kind}_{args.image_size}px{sizes}.json")
    if os.path.exists(path) and not args.force:
        log(f"{path} exists, skipped")
        return
    (x_train, y_train), validation, (x_test, y_test) = load(
        dataset, args.image_size, args.train_size, args.test_size, args.data_root
    )
    backbone = backbone_for(kind, args.image_size)
    start = time.time()
    f_train = block_features(backbone, x_train, args.batch_size)
    f_test = block_features(backbone, x_test, args.batch_size)
    eval_sets = [(f_test, y_test)]
    if validation is not None:
        eval_sets.append((block_features(backbone, validation[0], args.batch_size), validation[1]))
    forward_s = time.time() - start
    accuracies, *validation_accuracies = probe(f_train, y_train, eval_sets)
    seen = len(x_train) + len(x_test) + (0 if validation is None else len(validation[1]))
    result = {
        "dataset": dataset,
        "backbone": kind,
        "preset": PRESET,
        "image_size": args.image_size,
        "data_seed": 0,
        "train_images": int(len(x_train)),
        "test_images": int(len(x_test)),
        "block_accuracy": accuracies,
        "validation_images": None if validation is None else int(len(validation[1])),
        "validation_block_accuracy": validation_accuracies[0] if validation_accuracies else None,
        "forward_seconds": round(forward_s, 1),
        "images_per_second": round(seen / forward_s, 1),
        "date": time.strftime("%Y-%m-%d"),
    }
    os.makedirs(RESULTS, exist_ok=True)
    write_json_atomic(path, result)
    log(f"{dataset} {kind}: " + " ".join(f"{100 * a:.1f}" for a in accuracies))


def report():
    rows = []
    for path in sorted(glob.glob(os.path.join(RESULTS, "*.json"))):
        with open(path) as f:
            r = json.load(f)
        cells = " | ".join(f"{100 * a:.1f}" for a in r["block_accuracy"])
        rows.append(
            f"| {r['dataset']} | {r['backbone']} | {r['train_images']}/{r['test_images']} | {cells} |"
        )
    blocks = " | ".join(str(b) for b in range(1, 13))
    print(f"| data | weights | train/test | {blocks} |")
    print("|---|---|---|" + "---:|" * 12)
    print("\n".join(rows))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--datasets",
        default="fashion_mnist,digits",
        help="comma list: fashion_mnist, digits, cifar10, clothing (the photo sets use the DINOv2 "
        "benchmark's own splits)",
    )
    parser.add_argument(
        "--data-root", default=None, help="folder with the photo archives (default: ../shared/data)"
    )
    parser.add_argument("--backbones", default="pretrained,random")
    parser.add_argument("--image-size", type=int, default=DINOV2_BENCHMARK_IMAGE_SIZE)
    parser.add_argument("--train-size", type=int, default=2000, help="Fashion-MNIST training images")
    parser.add_argument("--test-size", type=int, default=1000, help="Fashion-MNIST test images")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--force", action="store_true")
    parser.add_argument("--report", action="store_true")
    args = parser.parse_args(argv)
    if args.report:
        return report()
    for dataset in args.datasets.split(","):
        for kind in args.backbones.split(","):
            run(dataset, kind, args)
    report()


if __name__ == "__main__":
    main()
