"""Exit policies (calibration to an accuracy target, temperature scaling,
patience) in numpy, checked against independent references (scipy, brute
force), and in EarlyExitModel on every backend."""

import json

import keras
import numpy as np
import pytest
from scipy import optimize, special

from keras_dmpo import DMPOClassifier, EarlyExitModel
from keras_dmpo.policy import ExitPolicy, temperature
from keras_dmpo.policy import rule as exit_rule
from keras_dmpo.policy import search as calib

NUM_CLASSES = 3


def random_outputs(num_exits=4, n=300, classes=5, seed=0):
    """Per-exit probabilities that get sharper and more accurate with depth."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, size=n)
    logits = np.stack(
        [(0.5 + k) * np.eye(classes)[labels] + rng.normal(size=(n, classes)) for k in range(num_exits)]
    )
    return special.softmax(2.0 * logits, axis=-1), labels


# -- the rule ---------------------------------------------------------------


def brute_force(probabilities, criterion, thresholds=None, temperatures=None, patience=None):
    """The rule written out sample by sample, exit by exit."""
    num_exits, n, _ = probabilities.shape
    exits = []
    for i in range(n):
        streak, previous = 0, None
        for k in range(num_exits):
            p = probabilities[k, i]
            if temperatures is not None:
                p = special.softmax(np.log(p) / temperatures[k])
            if criterion == "patience":
                label = int(np.argmax(p))
                streak = streak + 1 if label == previous else 1
                previous = label
                leave = streak >= patience
            elif criterion == "confidence":
                leave = p.max() >= thresholds[k]
            else:
                leave = 1 + np.sum(p * np.log(np.clip(p, 1e-300, None))) / np.log(len(p)) >= thresholds[k]
            if leave or k == num_exits - 1:
                exits.append(k)
                break
    return np.array(exits)


@pytest.mark.parametrize(
    "criterion, options",
    [
        ("confidence", {}),
        ("confidence", {"temperatures": [2.5, 1.7, 0.8, 1.0]}),
        ("entropy", {}),
        ("entropy", {"temperatures": [0.5, 1.3, 1.0, 3.0]}),
        ("patience", {"patience": 2}),
        ("patience", {"patience": 3}),
    ],
)
def test_policy_matches_brute_force(criterion, options):
    probabilities, _ = random_outputs()
    thresholds = None
    if criterion != "patience":
        thresholds = [0.55, 0.6, 0.7, 0.0] if criterion == "confidence" else [0.3, 0.35, 0.4, 0.0]
    policy = ExitPolicy(criterion, thresholds=thresholds, num_exits=4, **options)
    expected = brute_force(
        probabilities, criterion, thresholds, options.get("temperatures"), options.get("patience")
    )
    np.testing.assert_array_equal(policy.assign(probabilities), expected)
    assert len(set(expected.tolist())) >= 2  # a real mix of exits
    if criterion == "patience":
        np.testing.assert_array_equal(
            exit_rule.patience_exits(probabilities.argmax(-1), options["patience"]), expected
        )


def test_temper_is_a_softmax_of_scaled_log_probabilities():
    probabilities, _ = random_outputs(num_exits=1)
    for t in (0.3, 1.0, 4.0):
        np.testing.assert_allclose(
            exit_rule.temper(probabilities[0], t),
            special.softmax(np.log(probabilities[0]) / t, axis=-1),
            atol=1e-12,
        )
    # Labels never change.
    np.testing.assert_array_equal(
        exit_rule.temper(probabilities[0], 3.0).argmax(-1), probabilities[0].argmax(-1)
    )


def test_policy_arguments_are_checked():
    with pytest.raises(ValueError, match=r"`patience` must be an integer in \[2, 4\]"):
        ExitPolicy("patience", patience=1, num_exits=4)
    with pytest.raises(ValueError, match=r"`patience` applies to criterion='patience' only"):
        ExitPolicy("confidence", thresholds=[0.5, 0.0], patience=2)
    with pytest.raises(ValueError, match=r"`temperatures` must be None or 2 positive numbers"):
        ExitPolicy("confidence", thresholds=[0.5, 0.0], temperatures=[1.0, -1.0])
    with pytest.raises(ValueError, match=r"`criterion` must be one of .*got 'margin'"):
        ExitPolicy("margin", thresholds=[0.5, 0.0])
    with pytest.raises(ValueError, match="has no per-exit score"):
        exit_rule.exit_scores(np.ones((2, 3)) / 3, "patience")


# -- temperature scaling -------------------------------------------------------


def test_fit_temperature_matches_scipy():
    probabilities, labels = random_outputs(num_exits=3, n=500, seed=1)
    for p in probabilities:
        log_p = np.log(p)

        def nll(log_t, log_p=log_p):
            scaled = special.log_softmax(log_p / np.exp(log_t), axis=-1)
            return -scaled[np.arange(len(labels)), labels].mean()

        reference = float(np.exp(optimize.minimize_scalar(nll, bounds=(-3, 3), method="bounded").x))
        assert temperature.fit_temperature(p, labels) == pytest.approx(reference, rel=1e-3)


def test_expected_calibration_error_by_hand():
    # Two bins used: confidences 0.9 (2 samples, 1 right) and 0.6 (2, both right).
    p = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.4, 0.6]])
    labels = np.array([0, 1, 0, 1])
    expected = 0.5 * abs(0.5 - 0.9) + 0.5 * abs(1.0 - 0.6)
    assert temperature.expected_calibration_error(p, labels, bins=10) == pytest.approx(expected)
    # Temperature scaling lowers it on over-confident outputs.
    probabilities, labels = random_outputs(num_exits=1, n=1000, seed=2)
    t = temperature.fit_temperature(probabilities[0], labels)
    before = temperature.expected_calibration_error(probabilities[0], labels)
    after = temperature.expected_calibration_error(exit_rule.temper(probabilities[0], t), labels)
    assert after < before


# -- calibration to an accuracy target and of the patience ---------------------------


def test_calibrate_for_accuracy_meets_the_target_with_the_fewest_flops():
    probabilities, labels = random_outputs(n=400, seed=3)
    correct = probabilities.argmax(-1) == labels[None]
    scores = exit_rule.exit_scores(probabilities, "confidence")
    flops = [1.0, 2.0, 3.0, 4.0]
    for drop in (0.0, 0.01, 0.05):
        result = calib.calibrate_for_accuracy(scores, correct, flops, drop, full_model_flops=4.0)
        target = correct[-1].mean() - drop
        assert result.mode == "max_accuracy_drop" and result.target_accuracy == pytest.approx(target)
        exits = exit_rule.assign_exits(scores, result.thresholds)
        assert calib.exit_accuracy(exits, correct) == pytest.approx(result.validation_accuracy)
        assert result.validation_accuracy >= target - 1e-12
        # No budget-mode calibration on a fine grid meets the target for fewer FLOPs.
        for budget in np.linspace(1.0, 4.0, 61):
            other = calib.calibrate_thresholds(scores, correct, flops, budget)
            if other.validation_accuracy >= target - 1e-12:
                assert result.expected_flops <= other.expected_flops + 1e-9
        again = calib.calibrate_for_accuracy(scores, correct, flops, drop, full_model_flops=4.0)
        assert again.to_dict() == result.to_dict()  # deterministic
    with pytest.raises(ValueError, match=r"`max_accuracy_drop` must be a fraction in \[0, 1\)"):
        calib.calibrate_for_accuracy(scores, correct, flops, 1.5)


def test_calibrate_patience_against_every_p():
    probabilities, labels = random_outputs(n=400, seed=4)
    predicted = probabilities.argmax(-1)
    correct = predicted == labels[None]
    flops = np.array([1.0, 2.0, 3.0, 4.0])
    table = {}
    for p in (2, 3, 4):
        exits = exit_rule.patience_exits(predicted, p)
        table[p] = (calib.exit_accuracy(exits, correct), calib.expected_flops(exits, flops))
    budget = table[3][1] + 1e-6
    result = calib.calibrate_patience(predicted, correct, flops, flops_budget=budget)
    feasible = {p: v for p, v in table.items() if v[1] <= budget}
    assert result.patience == max(feasible, key=lambda p: (feasible[p][0], -feasible[p][1]))
    result = calib.calibrate_patience(predicted, correct, flops, max_accuracy_drop=0.02)
    target = correct[-1].mean() - 0.02
    ok = {p: v for p, v in table.items() if v[0] >= target - 1e-12}
    assert result.patience == min(ok, key=lambda p: (ok[p][1], -ok[p][0]))
    assert result.validation_accuracy >= target - 1e-12
    with pytest.raises(ValueError, match="below the cheapest patience"):
        calib.calibrate_patience(predicted, correct, flops, flops_budget=1.0)
    with pytest.raises(ValueError, match="exactly one of"):
        calib.calibrate_patience(predicted, correct, flops)


def test_old_calibration_records_still_load():
    old = {
        "thresholds": [0.5, 0.0],
        "expected_flops": 1.5,
        "expected_fraction": 0.5,
        "validation_accuracy": 0.8,
        "exit_fractions": [0.5, 0.5],
        "budget": 1.5,
        "full_model_flops": 3.0,
        "num_samples": 10,
    }
    result = calib.CalibrationResult.from_dict(old)
    assert result.mode == "flops_budget" and result.patience is None


# -- in EarlyExitModel, on this backend ------------------------------------------------


@pytest.fixture(scope="module")
def model(tiny_vit_preset):
    keras.utils.set_random_seed(3)
    return DMPOClassifier.from_preset(
        tiny_vit_preset, num_classes=NUM_CLASSES, exits=[1, 2, 3], covariance_exits="none", use_bypass=False
    )


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(5)
    return rng.uniform(size=(48, 32, 32, 3)).astype("float32"), rng.integers(0, NUM_CLASSES, size=48)


@pytest.mark.parametrize(
    "criterion, options",
    [("confidence", {"temperatures": [3.0, 0.5, 1.0, 1.0]}), ("entropy", {}), ("patience", {"patience": 2})],
)
def test_early_exit_model_applies_the_policy(model, data, criterion, options):
    x, _ = data
    ee = EarlyExitModel(model, criterion=criterion, **options)
    probabilities = ee.exit_probabilities(x)
    if criterion != "patience":
        scores = np.stack([ee.policy.scores(k, p) for k, p in enumerate(probabilities)])
        ee.thresholds = [float(np.median(s)) for s in scores[:-1]] + [0.0]
    expected = ee.policy.assign(probabilities)
    for batch_size in (5, 64):
        out = ee.predict(x, batch_size=batch_size)
        np.testing.assert_array_equal(out["exit_index"], expected)
        np.testing.assert_allclose(
            out["probabilities"], probabilities[expected, np.arange(len(x))], atol=1e-5
        )


def test_calibrate_to_an_accuracy_target(model, data):
    x, y = data
    ee = EarlyExitModel(model)
    result = ee.calibrate(x, y, max_accuracy_drop=0.05)
    probabilities = ee.exit_probabilities(x)
    correct = probabilities.argmax(-1) == y[None]
    achieved = calib.exit_accuracy(ee.policy.assign(probabilities), correct)
    assert result.mode == "max_accuracy_drop" and ee.calibration is result
    assert achieved == pytest.approx(result.validation_accuracy)
    assert achieved >= correct[-1].mean() - 0.05 - 1e-12
    with pytest.raises(ValueError, match="Give one of `flops_budget` and `max_accuracy_drop`, not both"):
        ee.calibrate(x, y, flops_budget=0.5, max_accuracy_drop=0.01)
    with pytest.raises(ValueError, match=r"`max_accuracy_drop` must be a fraction in \[0, 1\).*got -0.1"):
        ee.calibrate(x, y, max_accuracy_drop=-0.1)
    ee = EarlyExitModel(model, criterion="patience")
    result = ee.calibrate(x, y, max_accuracy_drop=0.05)
    assert ee.patience == result.patience and 2 <= result.patience <= ee.num_exits
    with pytest.raises(ValueError, match="`patience` applies to criterion='patience' only"):
        EarlyExitModel(model, patience=2)


def test_fit_temperatures_reports_ece(model, data):
    x, y = data
    ee = EarlyExitModel(model)
    report = ee.fit_temperatures(x, y)
    assert ee.temperatures == report["temperatures"] and len(report["temperatures"]) == ee.num_exits
    assert all(t > 0 for t in report["temperatures"])
    assert len(report["ece_before"]) == len(report["ece_after"]) == ee.num_exits


def test_policy_round_trips_through_keras_settings(model, tmp_path):
    ee = EarlyExitModel(model, criterion="patience", patience=3, temperatures=[2.0, 1.5, 1.0, 1.0])
    path = ee.save(str(tmp_path / "model.keras"))
    loaded = EarlyExitModel.load(path)
    assert (loaded.criterion, loaded.patience, loaded.temperatures) == ("patience", 3, [2.0, 1.5, 1.0, 1.0])
    assert loaded.policy == ee.policy
    with open(str(tmp_path / "model.early_exit.json")) as handle:
        assert json.load(handle)["policy"] == ee.policy.to_dict()


def test_export_spec_and_manifest_carry_the_policy(model):
    from keras_dmpo.litert import validate_manifest
    from keras_dmpo.litert.manifest import manifest_policy

    ee = EarlyExitModel(model, criterion="patience", patience=2, temperatures=[2.0, 1.0, 1.0, 1.0])
    spec = ee.export_spec()
    assert spec.policy == ee.policy
    manifest = spec.manifest(
        "tflite", num_classes=NUM_CLASSES, quantization=None, created_by="test", stages=[]
    )
    assert manifest["policy"] == ee.policy.to_dict() and manifest["format_version"] == 2
    assert not {"criterion", "thresholds", "temperatures", "patience"} & set(manifest)
    valid = _a_valid_manifest()
    assert manifest_policy(validate_manifest(valid)) == ExitPolicy("confidence", [0.0, 0.0, 0.0])
    with pytest.raises(ValueError, match=r"manifest\['policy'\].*`patience` must be an integer in \[2, 3\]"):
        validate_manifest(
            {
                **valid,
                "policy": {**valid["policy"], "criterion": "patience", "thresholds": None, "patience": 9},
            }
        )
    with pytest.raises(ValueError, match=r"manifest\['policy'\].*`temperatures` must be None or 3 positive"):
        validate_manifest({**valid, "policy": {**valid["policy"], "temperatures": [1.0, 0.0, 1.0]}})
    with pytest.raises(ValueError, match=r"manifest\['policy'\].*`criterion` must be one of.*'margin'"):
        validate_manifest({**valid, "policy": {**valid["policy"], "criterion": "margin"}})
    with pytest.raises(ValueError, match=r"manifest\['policy'\]\['num_exits'\] must be 3"):
        validate_manifest({**valid, "policy": {**valid["policy"], "num_exits": 2, "thresholds": [0.0, 0.0]}})
    with pytest.raises(ValueError, match=r"manifest\['criterion'\] must be absent in format 2"):
        validate_manifest({**valid, "criterion": "entropy"})
    with pytest.raises(ValueError, match=r"lacks the required key 'policy'"):
        validate_manifest({key: value for key, value in valid.items() if key != "policy"})
    # Format 1 (flat keys and a threshold per stage) is still read and checked.
    old = {key: value for key, value in valid.items() if key != "policy"}
    old.update(format_version=1, criterion="confidence", thresholds=[0.0, 0.0, 0.0])
    for stage in old["stages"]:
        stage["threshold"] = 0.0
    assert manifest_policy(validate_manifest(old)) == ExitPolicy("confidence", [0.0, 0.0, 0.0])
    with pytest.raises(ValueError, match=r"manifest\['patience'\].*an integer in \[2, 3\]"):
        validate_manifest({**old, "criterion": "patience", "patience": None})
    with pytest.raises(ValueError, match=r"manifest\['criterion'\].*'margin'"):
        validate_manifest({**old, "criterion": "margin"})


def _a_valid_manifest():
    """A complete format-2 manifest of 3 stages (no files are opened by validate_manifest)."""
    tokens = {"name": "tokens", "shape": [-1, 5, 8], "dtype": "float32"}
    probabilities = {"name": "probabilities", "shape": [-1, NUM_CLASSES], "dtype": "float32"}
    images = {"name": "images", "shape": [-1, 32, 32, 3], "dtype": "float32"}

    def stage(i, inputs, outputs):
        return {
            "file": f"stage_{i + 1}.tflite",
            "sha256": "0" * 64,
            "size_bytes": 10,
            "inputs": [inputs],
            "outputs": outputs,
            "index": i + 1,
            "exit_block": i + 1,
            "flops": float(i + 1),
        }

    return {
        "format": "tflite",
        "format_version": 2,
        "keras_dmpo_version": "0",
        "image_shape": [32, 32, 3],
        "num_classes": NUM_CLASSES,
        "preprocessing": {"scale": 1.0, "offset": 0.0, "input_range": [0.0, 1.0]},
        "exits": [1, 2, 3],
        "policy": ExitPolicy("confidence", [0.0, 0.0, 0.0]).to_dict(),
        "full_model_flops": 3.0,
        "stages": [
            stage(0, images, [probabilities, tokens]),
            stage(1, tokens, [probabilities, tokens]),
            stage(2, tokens, [probabilities]),
        ],
    }
