"""The tuning recipe: AdamW with linear warm-up and cosine decay."""

import math

import keras
import numpy as np
import pytest

from keras_dmpo import recipe


def reference_rate(step, peak, steps_per_epoch, epochs):
    """Warm-up 0 -> peak over one epoch, then cosine to 0 (numpy formula)."""
    warmup = steps_per_epoch
    if step < warmup:
        return peak * step / warmup
    decay = steps_per_epoch * (epochs - 1)
    t = min(step - warmup, decay) / decay
    return peak * 0.5 * (1.0 + math.cos(math.pi * t))


def test_schedule_matches_the_formula():
    optimizer = recipe.tuning_optimizer(train_images=1000, epochs=10, batch_size=32)
    assert isinstance(optimizer, keras.optimizers.AdamW)
    assert optimizer.weight_decay == pytest.approx(1e-4)
    schedule = optimizer._learning_rate
    steps_per_epoch = 32  # ceil(1000 / 32)
    for step in (0, 1, 16, 31, 32, 33, 100, 200, 287, 288, 400):
        expected = reference_rate(step, 6e-3, steps_per_epoch, 10)
        np.testing.assert_allclose(float(schedule(step)), expected, rtol=1e-5, atol=1e-9)


def test_constant_and_short_runs():
    constant = recipe.tuning_optimizer(100, 3, learning_rate=1e-3, schedule="constant")
    assert float(constant.learning_rate) == pytest.approx(1e-3)
    # A one-epoch run warms up over that epoch and never decays.
    one = recipe.tuning_optimizer(64, 1, batch_size=32)._learning_rate
    np.testing.assert_allclose([float(one(s)) for s in (0, 1, 2)], [0.0, 3e-3, 6e-3], rtol=1e-5)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(train_images=0, epochs=1), "`train_images` must be a positive integer; got 0"),
        (dict(train_images=10, epochs=2.5), "`epochs` must be a positive integer; got 2.5"),
        (dict(train_images=10, epochs=2, batch_size=True), "`batch_size` must be a positive integer"),
        (dict(train_images=10, epochs=2, learning_rate=-1.0), "`learning_rate` must be a positive number"),
        (dict(train_images=10, epochs=2, weight_decay=-0.1), "`weight_decay` must be a non-negative"),
        (
            dict(train_images=10, epochs=2, schedule="step"),
            r"`schedule` must be one of \('cosine', 'constant'\)",
        ),
    ],
)
def test_bad_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        recipe.tuning_optimizer(**kwargs)
