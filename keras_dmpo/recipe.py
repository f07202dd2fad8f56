"""The tuning recipe: AdamW with one epoch of linear warm-up, then cosine decay.

Chosen on validation for DINOv2-S (frozen backbone, trainable adapters and
exit heads, about 1,000 training images): a constant AdamW(1e-3) left every
exit under a linear probe of the frozen features; a warm-up to a peak of
6e-3 followed by cosine decay to zero took the single-exit model past it.
The benchmark, the CLI and the documented example all build their optimizer
here, so the recipe is written once. Keras is imported only when an
optimizer is built (the CLI reads the defaults before importing it).
"""

import math

DEFAULT_LEARNING_RATE = 6e-3
DEFAULT_WEIGHT_DECAY = 1e-4
DEFAULT_BATCH_SIZE = 32
# Enough optimizer steps for a few thousand images (the CLI's default).
DEFAULT_EPOCHS = 5
SCHEDULES = ("cosine", "constant")


def _check_positive(name, value, integer=False):
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not value > 0 or not math.isfinite(value):
        kind = "a positive integer" if integer else "a positive number"
        raise ValueError(f"`{name}` must be {kind}; got {value!r}.")


def warmup_cosine(learning_rate, steps_per_epoch, epochs, warmup_epochs=1):
    """Linear warm-up from 0 to ``learning_rate`` over ``warmup_epochs``,
    then cosine decay to 0 over the remaining epochs.

    Args:
        learning_rate: the peak learning rate.
        steps_per_epoch: optimizer steps in one epoch.
        epochs: the run's epochs.
        warmup_epochs: epochs of warm-up (fewer when the run is shorter).

    Returns:
        A ``keras.optimizers.schedules.CosineDecay``.
    """
    import keras

    _check_positive("learning_rate", learning_rate)
    _check_positive("steps_per_epoch", steps_per_epoch, integer=True)
    _check_positive("epochs", epochs, integer=True)
    warmup_epochs = min(warmup_epochs, epochs)
    warmup_steps = steps_per_epoch * warmup_epochs
    return keras.optimizers.schedules.CosineDecay(
        0.0,
        decay_steps=steps_per_epoch * (epochs - warmup_epochs) or 1,
        warmup_target=float(learning_rate),
        warmup_steps=warmup_steps,
    )


def tuning_optimizer(
    train_images,
    epochs,
    batch_size=DEFAULT_BATCH_SIZE,
    learning_rate=DEFAULT_LEARNING_RATE,
    weight_decay=DEFAULT_WEIGHT_DECAY,
    schedule="cosine",
):
    """AdamW with the recipe's learning-rate schedule for a run of ``epochs``
    over ``train_images`` images at ``batch_size``.

    Args:
        train_images: number of training images (sets the steps per epoch).
        epochs: the run's epochs.
        batch_size: the batch size ``fit`` will use.
        learning_rate: the peak (``"cosine"``) or constant learning rate.
        weight_decay: AdamW's decoupled weight decay.
        schedule: ``"cosine"`` (warm-up + cosine decay) or ``"constant"``.

    Returns:
        A ``keras.optimizers.AdamW``.

    Example:

    >>> optimizer = tuning_optimizer(train_images=1000, epochs=10)
    >>> round(float(optimizer.learning_rate), 6)  # step 0 of the warm-up
    0.0
    """
    import keras

    _check_positive("train_images", train_images, integer=True)
    _check_positive("epochs", epochs, integer=True)
    _check_positive("batch_size", batch_size, integer=True)
    _check_positive("learning_rate", learning_rate)
    if (
        isinstance(weight_decay, bool)
        or not isinstance(weight_decay, (int, float))
        or not math.isfinite(weight_decay)
        or weight_decay < 0
    ):
        raise ValueError(f"`weight_decay` must be a non-negative number; got {weight_decay!r}.")
    if schedule not in SCHEDULES:
        raise ValueError(f"`schedule` must be one of {SCHEDULES}; got {schedule!r}.")
    rate = learning_rate
    if schedule == "cosine":
        rate = warmup_cosine(learning_rate, math.ceil(train_images / batch_size), epochs)
    return keras.optimizers.AdamW(rate, weight_decay=weight_decay)
