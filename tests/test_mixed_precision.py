"""DMPOClassifier under the Keras mixed precision policies.

A tiny random ViT (conftest.TINY_VIT) built under ``mixed_bfloat16`` (every
backend) or ``mixed_float16`` (where the backend can train it): the blocks,
trunk adapters and bypasses compute in the low dtype, the exit heads in
float32; the logits and the loss are float32 and finite over a couple of
training steps; a float32 copy (what to export) matches within the low
dtype's precision.
"""

import warnings

import keras
import numpy as np
import pytest
from conftest import build_tiny_vit

from keras_dmpo import DMPOClassifier, EarlyExitModel, PhaseCallback
from keras_dmpo.litert import StagedRuntime

NUM_CLASSES = 3
# Max |mixed - float32| of the logits over max(1, max |logits|), measured
# about 0.005 (bfloat16) and 0.0006 (float16) on this tiny ViT.
LOGIT_TOLERANCE = {"bfloat16": 0.05, "float16": 0.01}


def float16_training_unsupported():
    """Why mixed_float16 cannot train on this backend and device, or None."""
    if keras.backend.backend() == "jax":
        import jax

        if jax.default_backend() == "cpu":
            # keras.ops.dot_product_attention (the backbone's attention) asks
            # XLA for float16 x float16 -> float32 dots; XLA:CPU cannot
            # lower them in the backward pass.
            return "JAX on CPU: 'F16_F16_F32' dot_general (float16 attention gradient) is not supported by XLA:CPU"
    return None


@pytest.fixture(params=["mixed_bfloat16", "mixed_float16"])
def dtype_policy(request):
    """Sets the global dtype policy for the test; always restores it."""
    if request.param == "mixed_float16":
        reason = float16_training_unsupported()
        if reason:
            pytest.skip(reason)
    previous = keras.config.dtype_policy()
    keras.mixed_precision.set_dtype_policy(request.param)
    try:
        yield keras.dtype_policies.get(request.param)
    finally:
        keras.mixed_precision.set_dtype_policy(previous)


def dtype_of(x):
    return keras.backend.standardize_dtype(x.dtype)


def test_trains_under_mixed_policy(dtype_policy):
    low = dtype_policy.compute_dtype
    # Two blocks: exit 1 is a covariance head behind a bypass, exit 2 linear.
    model = DMPOClassifier(
        build_tiny_vit(seed=0, num_layers=2),
        num_classes=NUM_CLASSES,
        exits=[1, 2],
        adapter_dim=8,
        bypass_dim=8,
        covariance_dim=8,
    )
    assert model.covariance_positions == (0,) and len(model.exit_bypasses) == 1
    # Trunk, adapters, bypasses in the low dtype; heads (and pooling) float32.
    for layer in [model.backbone, *model.trunk_adapters, *model.exit_bypasses]:
        assert layer.compute_dtype == low, layer.name
    for head in model.exit_heads:
        assert head.compute_dtype == "float32", head.name
    assert model.exit_heads[0].pooling.compute_dtype == "float32"
    assert {dtype_of(v) for v in model.weights} == {"float32"}

    rng = np.random.default_rng(0)
    x = rng.uniform(size=(4, 32, 32, 3)).astype("float32")
    y = rng.integers(0, NUM_CLASSES, size=4)

    # What the covariance head reads (low dtype) and makes (float32).
    tokens = model.exit_bypasses[0](keras.ops.cast(rng.normal(size=(2, 17, 32)), low))
    assert dtype_of(tokens) == low
    pooled = model.exit_heads[0].pooling(tokens)
    assert dtype_of(pooled) == "float32"
    assert np.all(np.isfinite(keras.ops.convert_to_numpy(pooled)))

    # predict_on_batch: compiled once, faster than eager on JAX.
    assert {dtype_of(t) for t in model.outputs} == {"float32"}
    outputs = model.predict_on_batch(x)
    assert {dtype_of(v) for v in outputs.values()} == {"float32"}
    loss = model.compute_loss(x=x, y=y, y_pred=outputs, training=False)
    assert dtype_of(loss) == "float32" and np.isfinite(float(keras.ops.convert_to_numpy(loss)))

    # The float32 copy (export this one) agrees within the low precision.
    reference = model.float32_copy()
    assert reference.backbone.compute_dtype == "float32"
    for layer in reference.trunk_adapters + reference.exit_bypasses:
        assert layer.compute_dtype == "float32", layer.name
    expected = reference.predict_on_batch(x)
    for name, a in outputs.items():
        b = expected[name]
        scale = max(1.0, float(np.max(np.abs(b))))
        assert np.max(np.abs(a - b)) <= LOGIT_TOLERANCE[low] * scale, (name, np.max(np.abs(a - b)))

    before = [keras.ops.convert_to_numpy(v).copy() for v in model.trainable_weights]
    model.compile(optimizer=keras.optimizers.AdamW(1e-3))
    if low == "float16":
        assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        history = model.fit(x, y, epochs=1, batch_size=2, verbose=0, callbacks=[PhaseCallback(verbose=0)])
    losses = history.history["loss"] + [history.history[f"exit_{k}_loss"][-1] for k in (1, 2)]
    assert np.all(np.isfinite(losses)), history.history
    after = [keras.ops.convert_to_numpy(v) for v in model.trainable_weights]
    assert all(np.all(np.isfinite(w)) for w in after)
    assert any(not np.array_equal(a, b) for a, b in zip(before, after)), "no weight moved"
    assert {dtype_of(v) for v in model.weights} == {"float32"}


def test_a_mixed_model_exports_its_float32_copy(tmp_path):
    previous = keras.config.dtype_policy()
    keras.mixed_precision.set_dtype_policy("mixed_bfloat16")
    try:
        model = DMPOClassifier(
            build_tiny_vit(seed=0, num_layers=2), num_classes=NUM_CLASSES, exits=[1, 2], adapter_dim=8
        )
    finally:
        keras.mixed_precision.set_dtype_policy(previous)
    assert not model.computes_in_float32
    reference = EarlyExitModel(model.float32_copy())
    assert reference.model.computes_in_float32 and reference.model is not model
    x = np.random.default_rng(1).uniform(size=(8, 32, 32, 3)).astype("float32")
    # Half the images leave at exit 1 (a threshold between two scores, far from both).
    scores = np.sort(reference.exit_probabilities(x)[0].max(-1))
    thresholds = [float(scores[3] + scores[4]) / 2, 0.0]
    reference.thresholds = thresholds
    mixed = EarlyExitModel(model, thresholds=thresholds)

    mixed.export_tflite(tmp_path / "tflite")

    out = StagedRuntime(str(tmp_path / "tflite")).predict(x)
    expected = reference.predict(x)
    np.testing.assert_array_equal(out["exit_index"], expected["exit_index"])
    np.testing.assert_allclose(out["probabilities"], expected["probabilities"], atol=1e-5)
    assert sorted(set(out["exit_index"].tolist())) == [0, 1]
    # The user's model is untouched: it still computes in bfloat16.
    assert not model.computes_in_float32 and model.backbone.compute_dtype == "bfloat16"


def test_policy_is_restored():
    # Runs after the parametrised test in file order: nothing leaked.
    assert keras.config.dtype_policy().name == "float32"
