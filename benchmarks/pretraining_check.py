"""Does the shipped pre-training help? Pre-trained vs random ViT weights.

For each target (the 5 Fashion-MNIST classes held out of the pre-training,
and scikit-learn digits), each initialisation (the shipped ``dmpo_vit_tiny``
weights, or the same architecture at random) and each seed:

* **linear probe**: scikit-learn ``LogisticRegression`` on frozen features
  (class token and mean of the patch tokens of the backbone's output);
* **PEFT**: LoRA rank 8 via keras-hub ``backbone.enable_lora(8)`` (backbone
  frozen) plus a class-token LayerNorm + Dense head, trained for a fixed
  number of epochs on a fixed training subset.

Accuracy is measured on the target's test split. Every (target, init, seed)
run writes its own JSON under ``--results-dir``; finished runs are skipped, so
the script can be stopped and resumed. ``--report`` prints the Markdown table
(mean +- std over seeds) from those files.

    KERAS_BACKEND=torch python benchmarks/pretraining_check.py
    python benchmarks/pretraining_check.py --report
"""

import argparse
import glob
import json
import os
import time

os.environ.setdefault("KERAS_BACKEND", "torch")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_RESULTS = os.path.join(HERE, "results", "pretraining")
# Fashion-MNIST classes never seen in pre-training (examples/pretrain_backbone.py).
TARGET_CLASSES = [1, 3, 4, 6, 9]

TARGETS = ["fashion_mnist_heldout", "digits"]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="dmpo_vit_tiny")
    parser.add_argument("--results-dir", default=DEFAULT_RESULTS)
    parser.add_argument("--targets", nargs="+", default=list(TARGETS))
    parser.add_argument("--inits", nargs="+", default=["pretrained", "random"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--fashion-train-size", type=int, default=3000)
    parser.add_argument("--fashion-test-size", type=int, default=2000)
    parser.add_argument("--fashion-epochs", type=int, default=2)
    parser.add_argument("--digits-epochs", type=int, default=3)
    parser.add_argument("--lora-rank", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--report", action="store_true", help="only print the table from the JSON files")
    return parser.parse_args(argv)


def load_target(name, args):
    from keras_dmpo import datasets

    if name == "fashion_mnist_heldout":
        data = datasets.load_fashion_mnist(
            classes=TARGET_CLASSES,
            validation_size=1000,
            seed=0,
            train_size=args.fashion_train_size,
            test_size=args.fashion_test_size,
        )
        return data, args.fashion_epochs
    if name == "digits":
        return datasets.load_digits(seed=0), args.digits_epochs
    raise ValueError(f"Unknown `--targets` entry {name!r}; known: {list(TARGETS)}")


def make_backbone(init, seed, args):
    import keras
    import keras_hub

    from keras_dmpo.models.vit_stages import load_vit_backbone

    keras.utils.set_random_seed(seed)
    pretrained = load_vit_backbone(args.preset)
    if init == "pretrained":
        return pretrained
    if init == "random":
        return keras_hub.models.ViTBackbone.from_config(pretrained.get_config())
    raise ValueError(f"Unknown `--inits` entry {init!r}; known: pretrained, random")


def features(backbone, x, batch_size=256):
    tokens = backbone.predict(x, batch_size=batch_size, verbose=0)
    return np.concatenate([tokens[:, 0], tokens[:, 1:].mean(axis=1)], axis=-1)


def linear_probe(backbone, data):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    start = time.time()
    x_train, y_train = data["train"]
    x_test, y_test = data["test"]
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    probe.fit(features(backbone, x_train), y_train)
    accuracy = float(np.mean(probe.predict(features(backbone, x_test)) == y_test))
    return accuracy, time.time() - start


def lora(backbone, data, epochs, seed, args):
    import keras

    keras.utils.set_random_seed(seed)
    backbone.enable_lora(args.lora_rank)
    num_classes = len(data["class_names"])
    inputs = keras.Input(backbone.input_shape[1:])
    tokens = backbone(inputs)
    head = keras.layers.LayerNormalization(epsilon=1e-6, name="head_norm")(tokens[:, 0])
    logits = keras.layers.Dense(num_classes, name="head")(head)
    model = keras.Model(inputs, logits)
    model.compile(
        optimizer=keras.optimizers.AdamW(args.learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    start = time.time()
    model.fit(*data["train"], batch_size=args.batch_size, epochs=epochs, shuffle=True, verbose=2)
    train_seconds = time.time() - start
    logits = model.predict(data["test"][0], batch_size=256, verbose=0)
    accuracy = float(np.mean(np.argmax(logits, -1) == data["test"][1]))
    return accuracy, train_seconds, trainable


def run(args):
    import keras

    os.makedirs(args.results_dir, exist_ok=True)
    loaded = {}
    # Seed-major order: a stopped run has every target and init for the
    # first seeds, and resumes with the missing ones.
    for seed in args.seeds:
        for target in args.targets:
            for init in args.inits:
                path = os.path.join(args.results_dir, f"{target}__{init}__seed{seed}.json")
                if os.path.exists(path):
                    print(f"skip {path} (done)", flush=True)
                    continue
                if target not in loaded:
                    loaded[target] = load_target(target, args)
                data, epochs = loaded[target]
                print(f"== {target} {init} seed {seed}", flush=True)
                backbone = make_backbone(init, seed, args)
                probe_acc, probe_s = linear_probe(backbone, data)
                lora_acc, lora_s, trainable = lora(backbone, data, epochs, seed, args)
                result = {
                    "target": target,
                    "init": init,
                    "seed": seed,
                    "weights": args.preset if init == "pretrained" else "random",
                    "backend": keras.backend.backend(),
                    "train_images": int(len(data["train"][1])),
                    "test_images": int(len(data["test"][1])),
                    "classes": data["class_names"],
                    "linear_probe_accuracy": probe_acc,
                    "linear_probe_seconds": round(probe_s, 1),
                    "lora_rank": args.lora_rank,
                    "lora_epochs": epochs,
                    "lora_batch_size": args.batch_size,
                    "lora_learning_rate": args.learning_rate,
                    "lora_trainable_parameters": trainable,
                    "lora_accuracy": lora_acc,
                    "lora_train_seconds": round(lora_s, 1),
                }
                with open(path, "w") as f:
                    json.dump(result, f, indent=1)
                print(json.dumps(result), flush=True)


def report(results_dir):
    rows = {}
    for path in sorted(glob.glob(os.path.join(results_dir, "*__seed*.json"))):
        with open(path) as f:
            r = json.load(f)
        rows.setdefault((r["target"], r["init"]), []).append(r)

    def stat(values):
        values = np.asarray(values, dtype="float64") * 100
        return f"{values.mean():.1f} ± {values.std():.1f}"

    lines = [
        "| target | weights | seeds | linear probe (%) | LoRA r8 (%) | LoRA train time (s) |",
        "|---|---|---|---|---|---|",
    ]
    for (target, init), runs in sorted(rows.items()):
        lines.append(
            f"| {target} ({runs[0]['train_images']} train / "
            f"{runs[0]['test_images']} test, {runs[0]['lora_epochs']} ep) | "
            f"{init} | {len(runs)} | "
            f"{stat([r['linear_probe_accuracy'] for r in runs])} | "
            f"{stat([r['lora_accuracy'] for r in runs])} | "
            f"{np.mean([r['lora_train_seconds'] for r in runs]):.0f} |"
        )
    for target in sorted({t for t, _ in rows}):
        if (target, "pretrained") in rows and (target, "random") in rows:
            gain = {
                key: 100
                * (
                    np.mean([r[key] for r in rows[(target, "pretrained")]])
                    - np.mean([r[key] for r in rows[(target, "random")]])
                )
                for key in ("linear_probe_accuracy", "lora_accuracy")
            }
            lines.append(
                f"\n{target}: pre-trained minus random = "
                f"{gain['linear_probe_accuracy']:+.1f} points (linear probe), "
                f"{gain['lora_accuracy']:+.1f} points (LoRA)"
            )
    text = "\n".join(lines)
    print(text)
    return text


def main(argv=None):
    args = parse_args(argv)
    if not args.report:
        run(args)
    report(args.results_dir)


if __name__ == "__main__":
    main()
