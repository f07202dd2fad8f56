"""Pre-train the shipped ``dmpo_vit_tiny`` ViT on a source task, resumably.

Source task (nothing of the benchmark target's labels or test images is used):

* **supervised** classification of the 5 *source* Fashion-MNIST classes
  (T-shirt/top, Pullover, Sandal, Sneaker, Bag), with random shifts (+-2 px)
  and horizontal flips; 2,500 of their training images are held out as the
  source validation split;
* **rotation prediction** (0/90/180/270 degrees, self-supervised) on the
  Fashion-MNIST *training* images with their labels dropped (all classes).

Every batch of 128 holds 96 labelled source images and 32 rotated unlabelled
ones; a class head and a rotation head sit on the class token. The benchmark's
Fashion-MNIST target is then the 5 held-out classes (Trouser, Dress, Coat,
Shirt, Ankle boot), with their own training labels and test images, which this
script never reads.

Checkpoints are written every epoch (``keras.callbacks.BackupAndRestore``
under ``--work-dir``); ``--resume`` continues an interrupted run at the next
epoch with the same optimizer state and data order. At the end (or when the
time limit stops it early) the backbone is written with keras-hub's
``save_to_preset`` together with a ``ViTImageConverter`` (28x28, scale 1.0, for
float images in [0, 1]).

    KERAS_BACKEND=torch python examples/pretrain_backbone.py \
        --output keras_dmpo/preset_files/dmpo_vit_tiny
"""

import argparse
import json
import os
import shutil
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "torch")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

# Fashion-MNIST class indices.
SOURCE_CLASSES = [0, 2, 5, 7, 8]  # T-shirt/top, Pullover, Sandal, Sneaker, Bag
TARGET_CLASSES = [1, 3, 4, 6, 9]  # Trouser, Dress, Coat, Shirt, Ankle boot

BACKBONE_CONFIG = dict(
    image_shape=(28, 28, 3), patch_size=4, num_layers=8, num_heads=4, hidden_dim=128, mlp_dim=256
)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", default="dmpo_vit_tiny_preset", help="preset directory to write")
    parser.add_argument("--work-dir", default="dmpo-pretrain", help="checkpoints, history and logs")
    parser.add_argument("--resume", action="store_true", help="continue from the checkpoint in --work-dir")
    parser.add_argument(
        "--epochs", type=int, default=8, help="number of checkpoint chunks of --steps-per-epoch"
    )
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument(
        "--rotation-per-batch", type=int, default=32, help="rotated unlabelled images per batch (0: off)"
    )
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--weight-decay", type=float, default=0.05)
    parser.add_argument("--shift", type=int, default=2, help="random shift in pixels (augmentation)")
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument(
        "--time-limit-minutes", type=float, default=45.0, help="stop after the epoch that would overrun this"
    )
    parser.add_argument(
        "--steps-per-epoch", type=int, default=70, help="steps per checkpoint chunk (a Keras epoch)"
    )
    return parser.parse_args(argv)


def augment(images, rng, shift, flip=True):
    """Random shift (zero padding) and horizontal flip of (N, H, W) images."""
    n, h, w = images.shape
    if shift:
        padded = np.pad(images, ((0, 0), (shift, shift), (shift, shift)))
        dy = rng.integers(0, 2 * shift + 1, size=n)
        dx = rng.integers(0, 2 * shift + 1, size=n)
        rows = dy[:, None] + np.arange(h)[None, :]
        cols = dx[:, None] + np.arange(w)[None, :]
        images = padded[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]
    if flip:
        mask = rng.random(n) < 0.5
        images = images.copy()
        images[mask] = images[mask, :, ::-1]
    return images


def rotate(images, rng):
    """Rotate each image by a random multiple of 90 degrees; return labels."""
    labels = rng.integers(0, 4, size=len(images))
    out = np.empty_like(images)
    for k in range(4):
        mask = labels == k
        out[mask] = np.rot90(images[mask], k=k, axes=(1, 2))
    return out, labels


def make_sequence(x_source, y_source, x_unlabelled, args):
    import keras

    labelled = args.batch_size - args.rotation_per_batch

    class SourceBatches(keras.utils.PyDataset):
        """Batches of augmented source images plus rotated unlabelled ones.

        A Keras "epoch" here is a chunk of ``--steps-per-epoch`` steps (the
        checkpoint interval); batches follow one global order over passes of
        the source data, so a resumed run sees exactly the same batches.
        """

        def __init__(self):
            super().__init__()
            self.epoch = 0
            self._perms = {}

        def set_epoch(self, epoch):
            self.epoch = epoch

        def _perm(self, kind, size, number):
            key = (kind, number)
            if key not in self._perms:
                rng = np.random.default_rng([args.seed, kind, number])
                self._perms = {k: v for k, v in self._perms.items() if k[0] != kind or k[1] >= number - 1}
                self._perms[key] = rng.permutation(size)
            return self._perms[key]

        def _take(self, kind, size, start, count):
            positions = np.arange(start, start + count)
            out = np.empty(count, "int64")
            for number in np.unique(positions // size):
                sel = positions // size == number
                out[sel] = self._perm(kind, size, int(number))[positions[sel] % size]
            return out

        def __len__(self):
            return args.steps_per_epoch

        def __getitem__(self, index):
            step = self.epoch * args.steps_per_epoch + index
            rng = np.random.default_rng([args.seed, step, 7])
            idx = self._take(0, len(y_source), step * labelled, labelled)
            images = augment(x_source[idx], rng, args.shift)
            class_labels = y_source[idx].astype("int32")
            rotation_labels = np.full(len(idx), -1, "int32")
            if args.rotation_per_batch:
                r = args.rotation_per_batch
                uidx = self._take(1, len(x_unlabelled), step * r, r)
                rotated, rot = rotate(augment(x_unlabelled[uidx], rng, args.shift), rng)
                images = np.concatenate([images, rotated])
                class_labels = np.concatenate([class_labels, np.full(r, -1, "int32")])
                rotation_labels = np.concatenate([rotation_labels, rot.astype("int32")])
            images = np.repeat(images[..., None], 3, axis=-1).astype("float32")
            return images, {"source_class": class_labels, "rotation": rotation_labels}

    return SourceBatches()


def masked_sparse_crossentropy(y_true, y_pred):
    """Cross-entropy that ignores samples labelled -1."""
    from keras import ops

    y_true = ops.reshape(ops.cast(y_true, "int32"), (-1,))
    mask = ops.cast(y_true >= 0, y_pred.dtype)
    safe = ops.where(y_true >= 0, y_true, ops.zeros_like(y_true))
    loss = ops.sparse_categorical_crossentropy(safe, y_pred, from_logits=True)
    return loss * mask


def build_model(num_classes):
    import keras
    import keras_hub

    backbone = keras_hub.models.ViTBackbone(**BACKBONE_CONFIG)
    inputs = keras.Input(BACKBONE_CONFIG["image_shape"])
    tokens = backbone(inputs)
    class_token = tokens[:, 0, :]
    outputs = {
        "source_class": keras.layers.Dense(num_classes, name="source_class")(class_token),
        "rotation": keras.layers.Dense(4, name="rotation")(class_token),
    }
    return backbone, keras.Model(inputs, outputs, name="pretrainer")


def accuracy(model, x, y, batch_size=256):
    logits = model.predict(x, batch_size=batch_size, verbose=0)
    return logits, None if y is None else float(np.mean(np.argmax(logits, -1) == y))


def main(argv=None):
    args = parse_args(argv)
    import keras

    from keras_dmpo import datasets

    keras.utils.set_random_seed(args.seed)
    os.makedirs(args.work_dir, exist_ok=True)
    backup_dir = os.path.join(args.work_dir, "checkpoint")
    history_path = os.path.join(args.work_dir, "history.json")
    if not args.resume:
        shutil.rmtree(backup_dir, ignore_errors=True)
        if os.path.exists(history_path):
            os.remove(history_path)

    # Source: labelled images of the source classes (validation held out).
    source = datasets.load_fashion_mnist(channels=1, classes=SOURCE_CLASSES, validation_size=2500, seed=0)
    x_source, y_source = source["train"]
    x_source = x_source[..., 0]
    x_val, y_val = source["validation"]
    x_val = np.repeat(x_val, 3, axis=-1)
    # Unlabelled pool: every Fashion-MNIST training image, labels dropped.
    pool = datasets.load_fashion_mnist(channels=1, validation_size=0)
    x_unlabelled = pool["train"][0][..., 0]
    del pool
    rng = np.random.default_rng(args.seed)
    val_rot_idx = rng.choice(len(x_unlabelled), 2000, replace=False)
    x_val_rot, y_val_rot = rotate(x_unlabelled[val_rot_idx], rng)
    x_val_rot = np.repeat(x_val_rot[..., None], 3, axis=-1)

    sequence = make_sequence(x_source, y_source, x_unlabelled, args)
    steps_per_epoch = len(sequence)
    total_steps = steps_per_epoch * args.epochs
    backbone, model = build_model(len(SOURCE_CLASSES))
    warmup = min(total_steps // 10, 300)
    schedule = keras.optimizers.schedules.CosineDecay(
        0.0,
        decay_steps=total_steps - warmup,
        warmup_target=args.learning_rate,
        warmup_steps=warmup,
        alpha=0.01,
    )
    model.compile(
        optimizer=keras.optimizers.AdamW(schedule, weight_decay=args.weight_decay, clipnorm=1.0),
        loss={"source_class": masked_sparse_crossentropy, "rotation": masked_sparse_crossentropy},
    )
    print(
        f"backend {keras.backend.backend()}, backbone parameters "
        f"{backbone.count_params():,}, {steps_per_epoch} steps/epoch x "
        f"{args.epochs} epochs, {len(y_source)} labelled source images, "
        f"{len(x_unlabelled)} unlabelled",
        flush=True,
    )

    history = []
    if os.path.exists(history_path):
        with open(history_path) as f:
            history = json.load(f)
    started = time.time()
    epoch_times = []

    class Progress(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            sequence.set_epoch(epoch)
            self.t0 = time.time()

        def on_epoch_end(self, epoch, logs=None):
            seconds = time.time() - self.t0
            epoch_times.append(seconds)
            val_logits = self.model.predict(x_val, batch_size=256, verbose=0)
            rot_logits = self.model.predict(x_val_rot, batch_size=256, verbose=0)
            record = {
                "epoch": epoch + 1,
                "seconds": round(seconds, 1),
                "loss": float(logs.get("loss", float("nan"))),
                "source_val_accuracy": float(np.mean(np.argmax(val_logits["source_class"], -1) == y_val)),
                "rotation_val_accuracy": float(np.mean(np.argmax(rot_logits["rotation"], -1) == y_val_rot)),
            }
            history.append(record)
            with open(history_path, "w") as f:
                json.dump(history, f, indent=1)
            print(f"\n{json.dumps(record)}", flush=True)
            elapsed = (time.time() - started) / 60
            if elapsed + max(epoch_times) / 60 > args.time_limit_minutes:
                print(
                    f"time limit: stopping after epoch {epoch + 1} "
                    f"({elapsed:.1f} min); continue with --resume",
                    flush=True,
                )
                self.model.stop_training = True

    # Progress must run before BackupAndRestore saves, so the history matches.
    model.fit(
        sequence,
        epochs=args.epochs,
        callbacks=[Progress(), keras.callbacks.BackupAndRestore(backup_dir, delete_checkpoint=False)],
        verbose=1 if sys.stdout.isatty() else 2,
    )
    train_minutes = sum(h["seconds"] for h in history) / 60
    epochs_done = history[-1]["epoch"] if history else 0

    # Source test accuracy (source classes only; target test images unused).
    x_test, y_test = source["test"]
    test_logits = model.predict(np.repeat(x_test, 3, axis=-1), batch_size=256, verbose=0)
    source_test = float(np.mean(np.argmax(test_logits["source_class"], -1) == y_test))
    save_preset(backbone, args.output)
    summary = {
        "backbone_config": {k: list(v) if isinstance(v, tuple) else v for k, v in BACKBONE_CONFIG.items()},
        "backend": keras.backend.backend(),
        "source_classes": SOURCE_CLASSES,
        "target_classes": TARGET_CLASSES,
        "epochs_done": epochs_done,
        "epochs_planned": args.epochs,
        "train_minutes": round(train_minutes, 1),
        "source_test_accuracy": source_test,
        "last_epoch": history[-1] if history else None,
        "args": vars(args),
    }
    with open(os.path.join(args.work_dir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    print(json.dumps(summary, indent=1), flush=True)


def save_preset(backbone, output):
    """Write ``backbone`` and a [0, 1]-input image converter as a preset."""
    import keras_hub

    if os.path.exists(output):
        shutil.rmtree(output)
    backbone.save_to_preset(output)
    converter = keras_hub.layers.ViTImageConverter(image_size=(28, 28), scale=1.0, offset=None)
    converter.save_to_preset(output)


if __name__ == "__main__":
    main()
