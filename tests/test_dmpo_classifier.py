import os
import subprocess
import sys
import warnings

import keras
import numpy as np
import pytest

from keras_dmpo import DMPOClassifier, PhaseCallback, PhaseSchedule

NUM_CLASSES = 3


def make_data(n=32, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(size=(n, 32, 32, 3)).astype("float32")
    y = rng.integers(0, NUM_CLASSES, size=n)
    return x, y


def numpy_weights(variables):
    return [keras.ops.convert_to_numpy(v).copy() for v in variables]


def softmax_ce(logits, onehot):
    logits = logits - logits.max(-1, keepdims=True)
    log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    return -(onehot * log_p).sum(-1)


@pytest.fixture
def model(tiny_vit_preset):
    keras.utils.set_random_seed(1)
    return DMPOClassifier.from_preset(tiny_vit_preset, num_classes=NUM_CLASSES, exits=[1, 2, 3])


def test_structure(model):
    assert model.exits == (1, 2, 3, 4)
    assert model.covariance_positions == (0, 1)  # blocks 1, 2 <= 4 / 2
    outputs = model.predict(make_data(4)[0], verbose=0)
    assert sorted(outputs) == ["exit_1", "exit_2", "exit_3", "exit_4"]
    assert all(v.shape == (4, NUM_CLASSES) for v in outputs.values())
    backbone_ids = {id(v) for v in model.backbone.weights}
    assert not backbone_ids & {id(v) for v in model.trainable_weights}
    lines = []
    model.summary(print_fn=lambda line, **_: lines.append(line))
    text = "\n".join(lines)
    assert "Trainable params" in text and "Non-trainable params" in text


def test_plain_multi_exit_switches(tiny_vit_preset):
    plain = DMPOClassifier.from_preset(
        tiny_vit_preset, num_classes=2, exits=[2], covariance_exits="none", use_bypass=False
    )
    assert plain.exit_bypasses == []
    assert {type(h).__name__ for h in plain.exit_heads} == {"LinearExitHead"}
    heads_only = DMPOClassifier.from_preset(tiny_vit_preset, num_classes=2, peft=None)
    assert heads_only.trunk_adapters == []


def test_fit_switches_phase_and_logs_every_exit(model):
    x, y = make_data()
    model.compile(optimizer=keras.optimizers.AdamW(1e-2))
    frozen_before = numpy_weights(model.backbone.weights)
    trainable_before = numpy_weights(model.trainable_weights)
    history = model.fit(
        x,
        y,
        epochs=2,
        batch_size=16,
        validation_data=(x[:8], y[:8]),
        verbose=0,
        callbacks=[PhaseCallback(PhaseSchedule(switch_fraction=0.5), verbose=0)],
    ).history
    for k in range(1, 5):
        for key in (f"exit_{k}_accuracy", f"exit_{k}_loss", f"val_exit_{k}_accuracy", f"loss_weight_{k}"):
            assert key in history, key
    assert history["phase"] == [1, 2]
    np.testing.assert_allclose([history[f"loss_weight_{k}"][0] for k in range(1, 5)], [0.25, 0.5, 0.75, 1.0])
    np.testing.assert_allclose([history[f"loss_weight_{k}"][1] for k in range(1, 5)], [1.0, 0.75, 0.5, 0.25])
    np.testing.assert_allclose(model.get_loss_weights(), [1.0, 0.75, 0.5, 0.25])
    # The backbone stays frozen; the adapters and heads learn.
    for before, after in zip(frozen_before, numpy_weights(model.backbone.weights)):
        np.testing.assert_array_equal(before, after)
    changed = [
        not np.array_equal(a, b) for a, b in zip(trainable_before, numpy_weights(model.trainable_weights))
    ]
    assert sum(changed) > len(changed) // 2


@pytest.mark.parametrize("label_kind", ["sparse", "one_hot"])
def test_loss_is_weighted_sum_of_exit_losses(model, label_kind):
    x, y = make_data(16, seed=3)
    sample_weight = np.linspace(0.5, 1.5, 16).astype("float32")
    weights = [0.3, 0.0, 1.2, 0.5]
    smoothing = 0.1
    model = DMPOClassifier.from_config({**model.get_config(), "label_smoothing": smoothing})
    model.compile(optimizer="adamw")
    model.set_loss_weights(weights)
    labels = y if label_kind == "sparse" else np.eye(NUM_CLASSES, dtype="float32")[y]
    result = model.evaluate(
        x, labels, sample_weight=sample_weight, batch_size=16, verbose=0, return_dict=True
    )
    logits = model.predict(x, verbose=0)
    targets = np.eye(NUM_CLASSES)[y] * (1 - smoothing) + smoothing / NUM_CLASSES
    exit_losses = [
        np.sum(softmax_ce(logits[f"exit_{k}"], targets) * sample_weight) / sample_weight.sum()
        for k in range(1, 5)
    ]
    for k in range(4):
        assert result[f"exit_{k + 1}_loss"] == pytest.approx(exit_losses[k], rel=1e-4)
    assert result["loss"] == pytest.approx(np.dot(weights, exit_losses), rel=1e-4)


def test_one_epoch_run_switches_mid_epoch_with_tf_data_and_pydataset(model):
    import tensorflow as tf

    x, y = make_data()
    model.compile(optimizer="adamw")
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
    history = model.fit(dataset, epochs=1, verbose=0, callbacks=[PhaseCallback(verbose=0)]).history
    assert history["phase"] == [2]  # 4 steps: switched at step 2 of the only epoch

    class Batches(keras.utils.PyDataset):
        def __len__(self):
            return 4

        def __getitem__(self, index):
            return x[index * 8 : (index + 1) * 8], y[index * 8 : (index + 1) * 8]

    history = model.fit(Batches(), epochs=2, verbose=0, callbacks=[PhaseCallback(verbose=0)]).history
    assert history["phase"] == [1, 2]


def test_distillation_changes_the_loss(model):
    x, y = make_data(16)
    model.compile(optimizer="adamw")
    plain = model.evaluate(x, y, verbose=0, return_dict=True)["loss"]
    model.set_loss_weights([1, 1, 1, 1], distill_weight=1.0, distill_temperature=2.0)
    distilled = model.evaluate(x, y, verbose=0, return_dict=True)["loss"]
    assert distilled > plain  # the KL term is non-negative and non-zero here


def test_resume_in_phase_two_with_backup_and_restore(model, tmp_path):
    x, y = make_data(16)
    model.compile(optimizer="adamw")
    seen = []

    class Interrupt(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            seen.append((epoch, self.model.get_loss_weights().tolist()))
            if epoch == 3 and not getattr(self, "resumed", False):
                raise RuntimeError("interrupted")

    schedule = PhaseSchedule(switch_epoch=2)
    backup = keras.callbacks.BackupAndRestore(str(tmp_path / "backup"))
    interrupt = Interrupt()
    with pytest.raises(RuntimeError, match="interrupted"):
        model.fit(
            x,
            y,
            epochs=4,
            batch_size=8,
            verbose=0,
            callbacks=[PhaseCallback(schedule, verbose=0), backup, interrupt],
        )
    model.set_loss_weights([1, 1, 1, 1])  # forget the phase: resuming must restore it
    seen.clear()
    interrupt.resumed = True
    history = model.fit(
        x,
        y,
        epochs=4,
        batch_size=8,
        verbose=0,
        callbacks=[PhaseCallback(schedule, verbose=0), backup, interrupt],
    ).history
    assert seen[0][0] == 3  # resumed at the interrupted epoch
    np.testing.assert_allclose(seen[0][1], [1.0, 0.75, 0.5, 0.25])
    assert history["phase"] == [2]


def test_fit_without_phase_callback_warns_once(model):
    x, y = make_data(8)
    model.compile(optimizer="adamw")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.fit(x, y, epochs=1, verbose=0)
        model.fit(x, y, epochs=1, verbose=0)
    messages = [str(w.message) for w in caught if "PhaseCallback" in str(w.message)]
    assert len(messages) == 1 and "stay fixed" in messages[0]


def test_keras_round_trip_and_weights_across_backends(model, tmp_path):
    x, _ = make_data(4)
    reference = model.predict(x, verbose=0)
    path = str(tmp_path / "model.keras")
    model.save(path)
    restored = keras.models.load_model(path)
    assert isinstance(restored, DMPOClassifier)
    again = restored.predict(x, verbose=0)
    for name in reference:
        np.testing.assert_allclose(reference[name], again[name], atol=1e-6)
    assert [type(h).__name__ for h in restored.exit_heads] == [type(h).__name__ for h in model.exit_heads]

    # Weights saved on this backend load on another one with equal outputs.
    backends = ["tensorflow", "jax", "torch"]
    other = backends[(backends.index(keras.backend.backend()) + 1) % 3]
    np.save(tmp_path / "x.npy", x)
    np.savez(tmp_path / "reference.npz", **reference)
    script = f"""
import sys, numpy as np, keras
import keras_dmpo.models.dmpo_classifier  # registers the class
sys.path.insert(0, {os.path.dirname(__file__)!r})
model = keras.models.load_model({path!r})
x = np.load({str(tmp_path / "x.npy")!r})
ref = np.load({str(tmp_path / "reference.npz")!r})
out = model.predict(x, verbose=0)
diff = max(float(np.max(np.abs(out[k] - ref[k]))) for k in ref.files)
print("max diff", diff)
assert diff <= 1e-5, diff
"""
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env={**os.environ, "KERAS_BACKEND": other},
    )
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(num_classes=1), "`num_classes` must be an integer >= 2; got 1"),
        (dict(num_classes=3, exits=[3, 1]), "increasing order"),
        (dict(num_classes=3, exits=[0]), "contains 0, outside \\[1, 4\\]"),
        (dict(num_classes=3, exits=[7]), "contains 7, outside \\[1, 4\\]"),
        (dict(num_classes=3, peft="prefix"), "`peft` must be one of"),
        (dict(num_classes=3, covariance_exits=[3], exits=[2]), "`covariance_exits` contains block 3"),
        (dict(num_classes=3, covariance_dim=64), "`covariance_dim`=64 is larger than the backbone width 32"),
        (dict(num_classes=3, loss_weights=[1, 2]), "`loss_weights` must have one weight per exit \\(4\\)"),
    ],
)
def test_bad_construction_arguments(tiny_vit, kwargs, message):
    with pytest.raises(ValueError, match=message):
        DMPOClassifier(backbone=tiny_vit, **kwargs)


def test_bad_training_inputs(model):
    x, y = make_data(8)
    model.compile(optimizer="adamw")
    with pytest.raises(ValueError, match="labels in \\[0, 5\\], outside \\[0, 3\\)"):
        model.fit(x, np.array([0, 1, 2, 5, 0, 1, 2, 0]), epochs=1, verbose=0)
    with pytest.raises(ValueError, match="shape \\(8, 28, 28, 3\\).*32x32 with 3 channels"):
        model.fit(np.zeros((8, 28, 28, 3), "float32"), y, epochs=1, verbose=0)
    with pytest.raises(ValueError, match="shape \\(2, 28, 28, 3\\)"):
        model.predict(np.zeros((2, 28, 28, 3), "float32"))
    with pytest.raises(ValueError, match="`switch_epoch`=5 is beyond the last epoch"):
        model.fit(x, y, epochs=2, verbose=0, callbacks=[PhaseCallback(PhaseSchedule(switch_epoch=5))])
    with pytest.raises(ValueError, match="`phase1_weights` must have one weight per exit \\(4\\); got 2"):
        model.fit(x, y, epochs=1, verbose=0, callbacks=[PhaseCallback(PhaseSchedule(phase1_weights=[1, 1]))])
    with pytest.raises(ValueError, match="do not pass `loss`"):
        model.compile(optimizer="adamw", loss="mse")


def test_non_finite_training_images_are_refused(model):
    import tensorflow as tf

    x, y = make_data(8)
    x[5, 1, 2, 0] = np.nan
    x[6, 0, 0, 1] = -np.inf
    model.compile(optimizer="adamw")
    before = numpy_weights(model.trainable_variables)
    message = r"`x` has NaN or inf pixel values in 2 of 8 samples \(indices \[5, 6\]\)"
    with pytest.raises(ValueError, match=message):
        model.fit(x, y, epochs=1, verbose=0)
    # A tf.data pipeline is checked on its first batch.
    with pytest.raises(ValueError, match=message):
        model.fit(tf.data.Dataset.from_tensor_slices((x, y)).batch(8), epochs=1, verbose=0)
    with pytest.raises(ValueError, match=r"indices \[5, 6\]"):
        model.evaluate(x, y, verbose=0)
    # Nothing was trained on them.
    for old, new in zip(before, numpy_weights(model.trainable_variables)):
        np.testing.assert_array_equal(old, new)


def test_lora_instead_of_adapters_trains_only_lora_weights(tiny_vit_preset):
    keras.utils.set_random_seed(4)
    model = DMPOClassifier.from_preset(
        tiny_vit_preset, num_classes=NUM_CLASSES, exits=[2], peft="lora", lora_rank=2
    )
    assert model.trunk_adapters == []
    trainable_names = [v.path for v in model.trainable_weights]
    backbone_trainable = [n for n in trainable_names if "lora" in n]
    assert backbone_trainable, trainable_names

    # Only LoRA factors of the backbone train (plus, as keras-hub's enable_lora
    # makes the query/value layers trainable, their biases); the rest is frozen.
    def lora_bias(v):
        return v.path.endswith("bias") and ("query" in v.path or "value" in v.path)

    frozen = [v for v in model.backbone.weights if "lora" not in v.path and not lora_bias(v)]
    assert len(frozen) < len(model.backbone.weights)
    before = numpy_weights(frozen)
    x, y = make_data(16)
    model.compile(optimizer=keras.optimizers.AdamW(1e-2))
    model.fit(x, y, epochs=1, batch_size=8, verbose=0, callbacks=[PhaseCallback(verbose=0)])
    for a, b in zip(before, numpy_weights(frozen)):
        np.testing.assert_array_equal(a, b)
