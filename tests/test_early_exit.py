import os

import keras
import numpy as np
import pytest

from keras_dmpo import DMPOClassifier, EarlyExitModel
from keras_dmpo.inference import early_exit
from keras_dmpo.policy import rule as exit_rule

NUM_CLASSES = 3


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(40, 32, 32, 3)).astype("float32")
    y = rng.integers(0, NUM_CLASSES, size=40)
    return x, y


@pytest.fixture(scope="module")
def dmpo_model(tiny_vit_preset):
    keras.utils.set_random_seed(2)
    return DMPOClassifier.from_preset(tiny_vit_preset, num_classes=NUM_CLASSES, exits=[1, 2, 3])


@pytest.fixture(scope="module")
def cheap_model(tiny_vit_preset):
    # Linear heads, no bypass: at this tiny width a covariance head costs more
    # than a block, so budgets below 100% need the cheap configuration.
    keras.utils.set_random_seed(3)
    return DMPOClassifier.from_preset(
        tiny_vit_preset, num_classes=NUM_CLASSES, exits=[1, 2, 3], covariance_exits="none", use_bypass=False
    )


def reference_predictions(ee, x, thresholds):
    probabilities = ee.exit_probabilities(x)
    index = exit_rule.assign_exits(exit_rule.exit_scores(probabilities, ee.criterion), thresholds)
    return index, probabilities[index, np.arange(len(x))]


@pytest.mark.parametrize("criterion", ["confidence", "entropy"])
def test_batched_early_exit_equals_all_exits_reference(dmpo_model, data, criterion):
    x, _ = data
    ee = EarlyExitModel(dmpo_model, criterion=criterion)
    scores = exit_rule.exit_scores(ee.exit_probabilities(x), criterion)
    # Thresholds at medians of the observed scores: every exit gets samples.
    ee.thresholds = [float(np.median(s)) for s in scores[:-1]] + [0.0]
    index, probabilities = reference_predictions(ee, x, ee.thresholds)
    assert len(set(index.tolist())) >= 3
    for batch_size in (1, 7, 64):
        out = ee.predict(x[:9] if batch_size == 1 else x, batch_size=batch_size)
        n = len(out["labels"])
        np.testing.assert_array_equal(out["exit_index"], index[:n])
        np.testing.assert_allclose(out["probabilities"], probabilities[:n], atol=1e-5)
        np.testing.assert_array_equal(out["labels"], probabilities[:n].argmax(-1))
        np.testing.assert_allclose(out["flops"], np.asarray(ee.flops_per_exit)[index[:n]])


def test_survivors_pooled_over_batches_equal_the_reference(dmpo_model, data, monkeypatch):
    # 40 images in batches of 3, pooled up to 10 images: blocks of 4 batches
    # and a shorter last block; every batch still comes back as its own part.
    monkeypatch.setattr(early_exit, "SURVIVOR_POOL_IMAGES", 10)
    blocks = list(early_exit._pooled((np.zeros((n, 1)), None) for n in [3] * 13 + [1]))
    assert [sum(len(images) for images, _ in block) for block in blocks] == [12, 12, 12, 4]
    x, _ = data
    ee = EarlyExitModel(dmpo_model)
    scores = exit_rule.exit_scores(ee.exit_probabilities(x), ee.criterion)
    ee.thresholds = [float(np.median(s)) for s in scores[:-1]] + [0.0]
    index, probabilities = reference_predictions(ee, x, ee.thresholds)
    parts = list(ee.iter_predict(x, batch_size=3))
    assert [len(p["labels"]) for p in parts] == [3] * 13 + [1]
    np.testing.assert_array_equal(np.concatenate([p["exit_index"] for p in parts]), index)
    np.testing.assert_allclose(np.concatenate([p["probabilities"] for p in parts]), probabilities, atol=1e-5)


def test_default_thresholds_answer_at_the_last_exit(cheap_model, data):
    out = EarlyExitModel(cheap_model).predict(data[0][:5])
    assert set(out["exit_index"].tolist()) == {3}


def test_flops_bookkeeping(cheap_model, dmpo_model):
    cheap = EarlyExitModel(cheap_model)
    assert np.all(np.diff(cheap.flops_per_exit) > 0)
    assert cheap.flops_per_exit[-1] == pytest.approx(cheap.full_model_flops, rel=0.01)
    dmpo = EarlyExitModel(dmpo_model)
    # Covariance heads and bypasses are counted on the way to every exit.
    assert dmpo.flops_per_exit[0] > cheap.flops_per_exit[0]
    assert dmpo.full_model_flops == pytest.approx(cheap.full_model_flops)


def test_calibrate_respects_budget_and_is_deterministic(cheap_model, data):
    x, y = data
    ee = EarlyExitModel(cheap_model)
    first = ee.calibrate(x, y, flops_budget=0.6)
    assert first.expected_flops <= 0.6 * ee.full_model_flops + 1e-6
    assert ee.thresholds == first.thresholds
    again = EarlyExitModel(cheap_model).calibrate(x, y, flops_budget=0.6)
    assert again.to_dict() == first.to_dict()
    out = ee.predict(x)
    assert out["flops"].mean() == pytest.approx(first.expected_flops)
    assert (out["labels"] == y).mean() == pytest.approx(first.validation_accuracy)
    # Absolute FLOPs work too.
    absolute = EarlyExitModel(cheap_model).calibrate(x, y, flops_budget=0.6 * ee.full_model_flops)
    assert absolute.thresholds == first.thresholds


def test_calibrate_from_datasets(cheap_model, data):
    import tensorflow as tf

    x, y = data
    ee = EarlyExitModel(cheap_model)
    expected = ee.calibrate(x, y, flops_budget=0.7).to_dict()
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
    assert EarlyExitModel(cheap_model).calibrate(dataset, flops_budget=0.7).to_dict() == expected

    class Batches(keras.utils.PyDataset):
        def __len__(self):
            return 3

        def __getitem__(self, i):
            return x[i * 16 : (i + 1) * 16], y[i * 16 : (i + 1) * 16]

    assert EarlyExitModel(cheap_model).calibrate(Batches(), flops_budget=0.7).to_dict() == expected


def test_curve_table_and_plot(cheap_model, data, tmp_path):
    x, y = data
    ee = EarlyExitModel(cheap_model)
    before = ee.thresholds
    curve = ee.curve(x[:20], y[:20], x[20:], y[20:], budgets=(0.1, 0.4, 0.6, 1.0))
    assert ee.thresholds == before  # curve does not change the model
    assert [row["budget"] for row in curve.rows] == [0.4, 0.6, 1.0]  # 10% is unreachable
    for row in curve.rows:
        assert row["validation_fraction"] <= row["budget"] + 1e-9
    # Budgets are calibrated together: more budget never loses validation accuracy.
    validation = [row["validation_accuracy"] for row in curve.rows]
    assert validation == sorted(validation)
    assert [s["exit"] for s in curve.single_exits] == [1, 2, 3, 4]
    assert "| budget |" in curve.table()
    path = curve.plot(str(tmp_path / "curve.png"))
    with open(path, "rb") as handle:
        assert handle.read(8) == b"\x89PNG\r\n\x1a\n"


def test_curve_from_probabilities_matches_curve(cheap_model, data):
    """Re-reading stored per-exit probabilities gives the same curve as
    running the model, and a shape that does not fit the labels is refused."""
    x, y = data
    ee = EarlyExitModel(cheap_model)
    budgets = (0.4, 0.6, 1.0)
    direct = ee.curve(x[:20], y[:20], x[20:], y[20:], budgets=budgets)
    val, test = ee.exit_probabilities(x[:20]), ee.exit_probabilities(x[20:])
    assert val.shape == (4, 20, cheap_model.num_classes)
    cached = ee.curve_from_probabilities(val, y[:20], test, y[20:], budgets=budgets)
    assert cached.rows == direct.rows
    assert cached.single_exits == direct.single_exits
    with pytest.raises(
        ValueError, match=r"`test_probabilities` must be \(num_exits, num_samples, num_classes\)"
    ):
        ee.curve_from_probabilities(val, y[:20], test[:, :5], y[20:], budgets=budgets)


def test_curve_rows_carry_the_policy_of_their_budget(cheap_model, data):
    x, y = data
    curve = EarlyExitModel(cheap_model).curve(x[:20], y[:20], x[20:], y[20:], budgets=(0.6, 1.0))
    for row in curve.rows:
        expected = EarlyExitModel(cheap_model).calibrate(x[:20], y[:20], flops_budget=row["budget"])
        ee = EarlyExitModel(cheap_model)
        ee.policy = row["policy"]
        assert ee.calibration.to_dict() == expected.to_dict()
        assert ee.thresholds == expected.thresholds == row["thresholds"]
    with pytest.raises(ValueError, match="`thresholds` has 2 values; expected 4"):
        ee.policy = dict(curve.rows[0]["policy"], thresholds=[0.5, 0.0])
    with pytest.raises(ValueError, match=r"`policy` has unknown keys \['budget'\]"):
        ee.policy = {"thresholds": [0.5, 0.5, 0.5, 0.0], "budget": 0.3}
    with pytest.raises(ValueError, match="`policy` must be an ExitPolicy or its dict; got list"):
        ee.policy = [0.5, 0.5, 0.5, 0.0]


def test_exit_probabilities_pad_the_last_batch(cheap_model, data):
    x, _ = data
    ee = EarlyExitModel(cheap_model)
    logits = cheap_model(x[:13], training=False)
    for k in range(ee.num_exits):
        exit_logits = keras.ops.convert_to_numpy(logits[f"exit_{k + 1}"]).astype("float64")
        exit_logits -= exit_logits.max(-1, keepdims=True)
        expected = np.exp(exit_logits) / np.exp(exit_logits).sum(-1, keepdims=True)
        for batch_size in (4, 13, 64):  # remainder 1, none, a single short batch
            got = ee.exit_probabilities(x[:13], batch_size=batch_size)
            assert got.shape == (ee.num_exits, 13, NUM_CLASSES)
            np.testing.assert_allclose(got[k], expected, atol=1e-5)
    with pytest.raises(ValueError, match="`batch_size` must be a positive integer; got 0"):
        ee.exit_probabilities(x, batch_size=0)


def test_thresholds_and_calibration_survive_save_and_load(cheap_model, data, tmp_path):
    x, y = data
    ee = EarlyExitModel(cheap_model, criterion="entropy")
    ee.calibrate(x, y, flops_budget=0.8)
    path = ee.save(str(tmp_path / "model.keras"))
    assert os.path.isfile(str(tmp_path / "model.early_exit.json"))
    loaded = EarlyExitModel.load(path)
    assert loaded.criterion == "entropy"
    assert loaded.thresholds == ee.thresholds
    assert loaded.calibration.to_dict() == ee.calibration.to_dict()
    np.testing.assert_array_equal(loaded.predict(x)["exit_index"], ee.predict(x)["exit_index"])


def test_bad_inputs(cheap_model, data, tmp_path):
    x, y = data
    ee = EarlyExitModel(cheap_model)
    with pytest.raises(ValueError, match="`thresholds` has 2 values; expected 4"):
        ee.thresholds = [0.5, 0.5]
    with pytest.raises(ValueError, match="`thresholds` must be in \\[0, 1\\]"):
        ee.thresholds = [0.5, 1.5, 0.5, 0.0]
    with pytest.raises(ValueError, match="`thresholds` must be in \\[0, 1\\]"):
        EarlyExitModel(cheap_model, thresholds=[0.5, float("nan"), 0.5, 0.0])
    with pytest.raises(ValueError, match="`criterion` must be one of"):
        EarlyExitModel(cheap_model, criterion="margin")
    with pytest.raises(ValueError, match="is below the cost of the first exit"):
        ee.calibrate(x, y, flops_budget=0.05)
    with pytest.raises(ValueError, match="`flops_budget` must be a fraction in \\(0, 1\\]"):
        ee.calibrate(x, y, flops_budget=-0.3)
    with pytest.raises(ValueError, match="flops_budget"):
        ee.calibrate(x, y, flops_budget=10 * ee.full_model_flops)
    with pytest.raises(ValueError, match="`x` is empty"):
        ee.calibrate(x[:0], y[:0], flops_budget=0.5)
    with pytest.raises(ValueError, match="`y` has 39 labels for 40 images"):
        ee.calibrate(x, y[:-1], flops_budget=0.5)
    with pytest.raises(ValueError, match="`y` has shape \\(40, 2, 2\\)"):
        ee.calibrate(x, np.zeros((40, 2, 2)), flops_budget=0.5)
    with pytest.raises(ValueError, match="`y` is required"):
        ee.calibrate(x, flops_budget=0.5)
    with pytest.raises(ValueError, match="`x` has shape \\(2, 28, 28, 3\\).*32x32 with 3 channels"):
        ee.predict(np.zeros((2, 28, 28, 3), "float32"))
    plain = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    with pytest.raises(ValueError, match="`model` must be a keras_dmpo.DMPOClassifier"):
        EarlyExitModel(plain)
    with pytest.raises(ValueError, match="does not exist"):
        EarlyExitModel.load(str(tmp_path / "missing.keras"))


def test_non_finite_images_are_refused_unless_allowed(cheap_model, data):
    x, y = data
    bad = x.copy()
    bad[3, 0, 0, 0] = np.nan
    bad[10] = np.inf
    ee = EarlyExitModel(cheap_model)
    with pytest.raises(
        ValueError,
        match=r"`x` has NaN or inf pixel values in 2 of 40 samples "
        r"\(indices \[3, 10\]\).*allow_non_finite=True",
    ):
        ee.predict(bad)
    with pytest.raises(ValueError, match=r"indices \[3, 10\].*Calibration needs finite"):
        ee.calibrate(bad, y, flops_budget=0.8)
    many = np.full_like(x, np.nan)
    with pytest.raises(ValueError, match=r"in 40 of 40 samples \(indices \[0, 1, 2, 3, 4\] and 35 more\)"):
        ee.predict(many)
    out = ee.predict(bad, allow_non_finite=True)
    clean = ee.predict(x)
    rows = [i for i in range(len(x)) if i not in (3, 10)]
    np.testing.assert_allclose(out["probabilities"][rows], clean["probabilities"][rows], atol=1e-6)
    assert out["probabilities"].shape == clean["probabilities"].shape
    assert ee.thresholds == EarlyExitModel(cheap_model).thresholds  # nothing was calibrated


def _file_bytes(path):
    with open(path, "rb") as handle:
        return handle.read()


def test_sidecar_is_bound_to_its_model_file(cheap_model, dmpo_model, data, tmp_path):
    import json

    from keras_dmpo.hashing import sha256_file
    from keras_dmpo.inference.saving import sidecar_path

    x, y = data
    ee = EarlyExitModel(cheap_model)
    ee.calibrate(x, y, flops_budget=0.8)
    path = ee.save(str(tmp_path / "model.keras"))
    with open(sidecar_path(path)) as handle:
        settings = json.load(handle)
    assert settings["model_sha256"] == sha256_file(path) == ee.model_sha256
    assert "previous" not in settings
    assert sorted(os.listdir(tmp_path)) == ["model.early_exit.json", "model.keras"]  # no debris, no lock

    # Another model written over model.keras by hand: the sidecar is stale.
    other = str(tmp_path / "other.keras")
    dmpo_model.save(other)
    os.replace(other, path)
    with pytest.raises(
        ValueError,
        match=r"model.early_exit.json' belong to another model file.*"
        r"refusing to apply stale thresholds",
    ):
        EarlyExitModel.load(path)
    # ... and calibrating an object loaded before the swap refuses to store
    # its thresholds for the new file.
    with pytest.raises(ValueError, match=r"changed since this model was loaded or saved"):
        ee.save_settings(sidecar_path(path))

    # Sidecars from before the hash existed are still read.
    ee.save(path)
    legacy = {k: v for k, v in settings.items() if k != "model_sha256"}
    with open(sidecar_path(path), "w") as handle:
        json.dump(legacy, handle)
    assert EarlyExitModel.load(path).thresholds == ee.thresholds


def test_interrupted_save_leaves_old_or_new_pair(cheap_model, dmpo_model, data, tmp_path, monkeypatch):
    """Every point at which a save can stop (simulated by failing the Nth
    rename) leaves a model that loads with its own thresholds."""
    from keras_dmpo.inference.saving import sidecar_path

    old = EarlyExitModel(dmpo_model, thresholds=[0.9, 0.8, 0.7, 0.0])
    new = EarlyExitModel(cheap_model, thresholds=[0.25, 0.5, 0.75, 0.0])
    real_replace = os.replace
    seen = []
    for fail_at in range(1, 4):  # the three renames of a save over an existing model
        directory = tmp_path / f"run_{fail_at}"
        path = old.save(str(directory / "model.keras"))
        old_bytes = _file_bytes(path)
        calls = []

        def replace(src, dst, fail_at=fail_at, calls=calls):
            calls.append(dst)
            if len(calls) == fail_at:
                raise OSError(f"simulated crash before rename {fail_at}")
            return real_replace(src, dst)

        monkeypatch.setattr(os, "replace", replace)
        with pytest.raises(OSError, match="simulated crash"):
            new.save(path)
        monkeypatch.setattr(os, "replace", real_replace)
        loaded = EarlyExitModel.load(path)
        if _file_bytes(path) == old_bytes:
            assert loaded.thresholds == old.thresholds
            seen.append("old")
        else:
            assert loaded.thresholds == new.thresholds
            seen.append("new")
        assert os.path.basename(calls[-1]) in ("model.keras", "model.early_exit.json")
        assert [e for e in os.listdir(directory) if "partial" in e] == []
    assert seen == ["old", "old", "new"]
    assert sidecar_path(path).endswith("model.early_exit.json")
