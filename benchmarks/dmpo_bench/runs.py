"""One benchmark run: build the method's model, train it, calibrate its
budgets on validation, score them on test, and return the record.

Every method uses the same frozen backbone, the same trunk PEFT (parallel
adapters unless the method says otherwise), the same exits, training subset,
epochs, batch size and optimizer within one table (one data set).
"""

import dataclasses
import math
import os
import platform
import time
import warnings

from dmpo_bench.budgets import calibrated_budgets
from dmpo_bench.latency import measure_latency
from dmpo_bench.profiles import CALIBRATION, METHODS, SCHEMA_VERSION
from dmpo_bench.step_timer import StepTimer


@dataclasses.dataclass(frozen=True)
class RunSettings:
    """What every run of one data set shares (besides the data).

    Attributes:
        epochs, batch_size: training length and batch.
        exits: exit blocks, or None for the model's default.
        quick: a smoke test (recorded).
        image_shape: input shape for backbones that interpolate, or None.
        optimizer: ``learning_rate``, ``weight_decay``, ``schedule``.
        data_seed: seed of the splits; data_source: what was read (recorded).
        latency: also time the staged LiteRT model; latency_images: on how
            many test images.
        save_models_dir: where to save each run's ``EarlyExitModel`` (with
            the 30% budget's thresholds), or None.
        dtype_policy: the Keras dtype policy the model is built and trained
            under (``"float32"``, ``"mixed_bfloat16"``, ...; recorded).
    """

    epochs: int
    batch_size: int
    exits: object
    quick: bool
    image_shape: object
    optimizer: dict
    data_seed: int
    data_source: object
    latency: bool
    latency_images: int
    save_models_dir: object = None
    dtype_policy: str = "float32"


def log(text=""):
    print(text, flush=True)


def environment():
    import keras
    import keras_hub

    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = None
    return {
        # No accelerator was lent to the tasks that ran these: CPU only.
        "accelerator": None,
        "backend": keras.backend.backend(),
        "keras": keras.__version__,
        "keras_hub": keras_hub.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "load_average_at_start": load,
    }


def trainable_parameters(model):
    import numpy as np

    return int(sum(int(np.prod(w.shape)) for w in model.trainable_weights))


def matched_lora_rank(backbone, num_classes, exits, common):
    """The LoRA rank whose trainable parameters come closest to the adapter
    model's (heads and bypasses are the same in both; LoRA's count is linear
    in the rank, so two probe builds give it)."""
    from keras_dmpo import DMPOClassifier

    target = trainable_parameters(
        DMPOClassifier(backbone=backbone, num_classes=num_classes, exits=exits, **common)
    )
    counts = []
    for rank in (1, 2):
        probe = backbone.__class__.from_config(backbone.get_config())  # LoRA changes the backbone in place
        model = DMPOClassifier(
            backbone=probe, num_classes=num_classes, exits=exits, peft="lora", lora_rank=rank, **common
        )
        counts.append(trainable_parameters(model))
    per_rank = counts[1] - counts[0]
    base = counts[0] - per_rank
    return max(1, int(round((target - base) / per_rank)))


def build_model(method, backbone, num_classes, exits, common=None):
    """``common``: options every method shares (the DINOv2 input normalisation)."""
    from keras_dmpo import DMPOClassifier

    common = dict(common or {})
    options, _, _ = METHODS[method]
    if options == "single":
        num_layers = backbone.get_config()["num_layers"]
        return DMPOClassifier(backbone=backbone, num_classes=num_classes, exits=[num_layers], **common)
    options = dict(options)
    if options.get("lora_rank") == "matched":
        options["lora_rank"] = matched_lora_rank(backbone, num_classes, exits, common)
    return DMPOClassifier(backbone=backbone, num_classes=num_classes, exits=exits, **options, **common)


def phase_schedule(method):
    """The method's ``PhaseSchedule``, or None for uniform loss weights
    (``METHODS``: True is the default schedule, a dict its options)."""
    from keras_dmpo import PhaseSchedule

    use_callback = METHODS[method][1]
    if not use_callback:
        return None
    return PhaseSchedule(**(use_callback if isinstance(use_callback, dict) else {}))


def compile_for(model, schedule, num_train, settings):
    """Compile with the tuning optimizer; uniform loss weights without a schedule."""
    from keras_dmpo import tuning_optimizer

    if schedule is None:
        model.set_loss_weights([1.0] * model.num_exits)
    opt = settings.optimizer
    optimizer = tuning_optimizer(
        num_train,
        settings.epochs,
        settings.batch_size,
        learning_rate=opt["learning_rate"],
        weight_decay=opt["weight_decay"],
        schedule=opt.get("schedule") or "constant",
    )
    model.compile(optimizer=optimizer)


def fit_timed(model, schedule, x_train, y_train, settings):
    """Fit ``model``; returns the step timer and the wall seconds."""
    from keras_dmpo import PhaseCallback

    timer = StepTimer(skip=3)
    callbacks = [timer] + ([PhaseCallback(schedule, verbose=1)] if schedule is not None else [])
    start = time.perf_counter()
    with warnings.catch_warnings():
        # One-phase methods train without a PhaseCallback on purpose.
        warnings.filterwarnings("ignore", message=".*without a PhaseCallback.*")
        model.fit(
            x_train,
            y_train,
            epochs=settings.epochs,
            batch_size=settings.batch_size,
            callbacks=callbacks,
            verbose=2,
            shuffle=True,
        )
    return timer, time.perf_counter() - start


def timing(timer, train_seconds, num_train, eval_seconds, eval_images, settings, start):
    images_seen = num_train * settings.epochs
    steady_images = None
    if timer.steady_steps:
        # the last batch of an epoch may be short: count images, not steps
        steps_per_epoch = math.ceil(num_train / settings.batch_size)
        total_steps = steps_per_epoch * settings.epochs
        steady_images = images_seen * timer.steady_steps / total_steps

    def per_image(seconds):
        return round(1000 * seconds / steady_images, 3) if steady_images else None

    return {
        "train_seconds": round(train_seconds, 2),
        "train_images_seen": int(images_seen),
        "train_ms_per_image": round(1000 * train_seconds / images_seen, 3),
        "steady_train_ms_per_image": per_image(timer.steady_seconds),
        "steady_train_cpu_ms_per_image": per_image(timer.steady_cpu_seconds),
        "first_steps_seconds": round(timer.first_seconds, 2),
        "eval_seconds": round(eval_seconds, 2),
        "eval_images": int(eval_images),
        "total_seconds": round(time.time() - start, 2),
    }


def model_config(model, schedule, trainable, sizes, settings):
    """The record's ``config``: the data, the training and the model's parts."""
    num_train, num_val, num_test = sizes
    return {
        "train_images": int(num_train),
        "validation_images": int(num_val),
        "test_images": int(num_test),
        "data_seed": settings.data_seed,
        "data_source": settings.data_source,
        "epochs": settings.epochs,
        "batch_size": settings.batch_size,
        "optimizer": {"name": "AdamW", **settings.optimizer},
        "exits": [int(e) for e in model.exits],
        "covariance_exits": [int(model.exits[i]) for i in model.covariance_positions],
        # exits whose predictor reads through a bypass (never the last one)
        "bypass_exits": [int(e) for e in model.bypass_exits],
        "use_bypass": bool(model.exit_bypasses),
        "peft": model.peft,
        "adapter_dim": model.adapter_dim,
        "lora_rank": model.lora_rank,
        "bypass_dim": model.bypass_dim,
        "covariance_dim": model.covariance_dim,
        "covariance_iterations": model.covariance_iterations,
        "phase_schedule": None if schedule is None else schedule.get_config(),
        "loss_weights": [1.0] * model.num_exits if schedule is None else None,
        "trainable_parameters": trainable,
        "dtype_policy": settings.dtype_policy,
    }


def save_model(ee, budgets, path):
    """Save the run's model with the 30% budget's policy (or the model's
    own when 30% is out of reach), for later export and quantization."""
    row = next((r for r in budgets if round(r["budget"], 6) == 0.3 and r.get("reachable")), None)
    if row is not None:
        ee.thresholds = row["thresholds"]
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    ee.save(path)
    log(f"    saved {path} ({'30% thresholds' if row else 'no 30% thresholds: out of reach'})")


def run_one(dataset, method, seed, data, settings, backbone, command):
    """Train ``method`` on ``data`` with run seed ``seed``.

    Args:
        data: the splits (``data.load_split``).
        settings: a ``RunSettings``.
        backbone: ``(preset directory, backbone_source, sha256)``.
        command: the command line, recorded.

    Returns:
        The record; its ``_outputs`` (the per-exit outputs, for
        ``outputs.write_outputs``) must be popped before writing it.
    """
    import keras

    from keras_dmpo import EarlyExitModel
    from keras_dmpo.models.options import load_preset_backbone

    preset_dir, backbone_source, backbone_sha = backbone
    start = time.time()
    env = environment()
    keras.utils.set_random_seed(seed)
    (x_train, y_train), (x_val, y_val), (x_test, y_test) = data["train"], data["validation"], data["test"]
    # The backbone is loaded under the policy too (a float preset loads under
    # the current one); the global policy is put back at once, the model keeps its.
    previous_policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy(settings.dtype_policy)
    try:
        trunk, common = load_preset_backbone(preset_dir, image_shape=settings.image_shape)
        model = build_model(method, trunk, len(data["class_names"]), settings.exits, common)
    finally:
        keras.config.set_dtype_policy(previous_policy)
    schedule = phase_schedule(method)
    compile_for(model, schedule, len(x_train), settings)
    trainable = trainable_parameters(model)
    log(
        f"--- {dataset} / {method} / seed {seed}: exits {list(model.exits)}, "
        f"covariance heads at {[model.exits[i] for i in model.covariance_positions]}, "
        f"bypass {bool(model.exit_bypasses)}, peft {model.peft}, {trainable:,} trainable parameters"
    )
    timer, train_seconds = fit_timed(model, schedule, x_train, y_train, settings)

    eval_start = time.perf_counter()
    ee = EarlyExitModel(model)
    val_probs = ee.exit_probabilities(x_val)
    test_probs = ee.exit_probabilities(x_test)
    budgets, single_exits = calibrated_budgets(
        val_probs, y_val, test_probs, y_test, ee.flops_per_exit, ee.full_model_flops, ee.exits
    )
    eval_seconds = time.perf_counter() - eval_start
    if settings.save_models_dir:
        save_model(
            ee, budgets, os.path.join(settings.save_models_dir, f"{dataset}_{method}_seed{seed}.keras")
        )

    latency = None
    if settings.latency:
        try:
            latency = measure_latency(ee, budgets, x_test, settings.latency_images)
        except Exception as error:  # keep the accuracy results of a long run
            log(f"    latency measurement failed: {type(error).__name__}: {error}")
            latency = {"error": f"{type(error).__name__}: {error}"}

    eval_images = len(x_val) + len(x_test)
    return {
        "schema_version": SCHEMA_VERSION,
        "dataset": dataset,
        "method": method,
        "seed": seed,
        "quick": settings.quick,
        "method_description": METHODS[method][2],
        "command": command,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "backbone_source": backbone_source,
        "backbone_sha256": backbone_sha,
        "backbone_config": {
            k: v for k, v in trunk.get_config().items() if k not in ("name", "dtype", "trainable")
        },
        "config": model_config(model, schedule, trainable, (len(x_train), len(x_val), len(x_test)), settings),
        "environment": env,
        "timing": timing(timer, train_seconds, len(x_train), eval_seconds, eval_images, settings, start),
        "flops": {
            "flops_per_exit": ee.flops_per_exit,
            "full_model_flops": ee.full_model_flops,
            "fractions": ee.flops_fractions,
        },
        "budgets": budgets,
        "calibration": CALIBRATION,
        "single_exits": single_exits,
        "latency": latency,
        # Kept for re-reading the run under other exit policies without retraining.
        "_outputs": {
            "val_log_probabilities": val_probs,
            "val_labels": y_val,
            "test_log_probabilities": test_probs,
            "test_labels": y_test,
        },
    }
