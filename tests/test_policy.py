"""The exit policy as one value: replacement rules, the on-disk form, files
written before it existed, and the numpy-only package."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from keras_dmpo import DMPOClassifier, EarlyExitModel
from keras_dmpo.policy import ExitPolicy, calibrate, route

FORMAT1 = os.path.join(os.path.dirname(__file__), "data", "format1")


def outputs(num_exits=3, n=60, classes=4, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    logits = np.stack(
        [(1.0 + k) * np.eye(classes)[labels] + rng.normal(size=(n, classes)) for k in range(num_exits)]
    )
    probabilities = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    return probabilities, labels


def test_patience_then_confidence_needs_new_thresholds():
    # Before the policy was one value, a patience calibration left zeros as
    # thresholds, and switching to "confidence" kept them: every sample left
    # at exit 1.
    probabilities, labels = outputs()
    patience = calibrate(probabilities, labels, [1.0, 2.0, 3.0], 3.0, {"max_accuracy_drop": 0.5}, "patience")
    assert patience.thresholds is None and patience.calibration.thresholds is None
    with pytest.raises(
        ValueError, match="Changing the criterion from 'patience' to 'confidence' needs new `thresholds`"
    ):
        patience.replace(criterion="confidence")
    confident = patience.replace(criterion="confidence", thresholds=[0.9, 0.9, 0.0])
    assert confident.patience is None and confident.calibration is None
    assert (
        confident.assign(probabilities).tolist()
        == ExitPolicy("confidence", [0.9, 0.9, 0.0]).assign(probabilities).tolist()
    )
    with pytest.raises(ValueError, match="`thresholds` must be None for criterion='patience'"):
        ExitPolicy("patience", thresholds=[0.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="needs new `thresholds`"):
        confident.replace(criterion="entropy")
    assert confident.replace(criterion="patience").thresholds is None


def test_any_change_drops_the_calibration_record():
    probabilities, labels = outputs()
    chosen = calibrate(probabilities, labels, [1.0, 2.0, 3.0], 3.0, 0.6)
    assert chosen.calibration is not None and chosen.calibration.expected_flops <= 0.6 * 3.0 + 1e-9
    assert chosen.replace(temperatures=[2.0, 1.0, 1.0]).calibration is None
    assert chosen.replace(thresholds=[0.5, 0.5, 0.0]).calibration is None
    with pytest.raises(ValueError, match=r"Unknown ExitPolicy fields \['criteria'\]"):
        chosen.replace(criteria="entropy")
    with pytest.raises(ValueError, match="`thresholds` has 2 values; expected 3"):
        chosen.replace(thresholds=[0.5, 0.0])


def test_to_dict_is_the_only_form_and_round_trips():
    probabilities, labels = outputs()
    for criterion in ("confidence", "entropy", "patience"):
        chosen = calibrate(
            probabilities, labels, [1.0, 2.0, 3.0], 3.0, 0.95, criterion, temperatures=[1.5, 1.0, 1.0]
        )
        data = json.loads(json.dumps(chosen.to_dict()))
        back = ExitPolicy.from_dict(data)
        assert back == chosen and back.calibration.to_dict() == chosen.calibration.to_dict()
        np.testing.assert_array_equal(back.assign(probabilities), chosen.assign(probabilities))
    with pytest.raises(ValueError, match=r"`policy` has unknown keys \['margin'\]"):
        ExitPolicy.from_dict({**chosen.to_dict(), "margin": 1})
    with pytest.raises(
        ValueError, match="`policy` is not a valid exit policy: `num_exits` must be a positive integer"
    ):
        ExitPolicy.from_dict({**chosen.to_dict(), "num_exits": 0})


def test_route_equals_the_all_exits_reference():
    probabilities, _ = outputs(num_exits=4, n=50)
    policy = ExitPolicy("entropy", thresholds=[0.6, 0.5, 0.4, 0.0])
    scores = policy.all_scores(probabilities)
    expected = np.where(
        (scores[:3] >= np.array([[0.6], [0.5], [0.4]])).any(0),
        (scores[:3] >= np.array([[0.6], [0.5], [0.4]])).argmax(0),
        3,
    )
    seen = []

    def run_stage(k, rows):
        seen.append(len(rows))
        return probabilities[k, rows], rows

    exit_index, answers = route(policy, np.arange(50), run_stage)
    np.testing.assert_array_equal(exit_index, expected)
    np.testing.assert_array_equal(answers, probabilities[expected, np.arange(50)])
    # Each stage ran on the survivors only.
    assert seen == [50] + [int((expected >= k).sum()) for k in range(1, len(seen))]


def test_early_exit_model_holds_one_policy(tiny_vit):
    model = DMPOClassifier(backbone=tiny_vit, num_classes=3, exits=[2, 4])
    ee = EarlyExitModel(model, criterion="patience")
    with pytest.raises(AttributeError):
        ee.criterion = "confidence"
    with pytest.raises(ValueError, match="`policy` is for 3 exits; this model has 2"):
        ee.policy = ExitPolicy("confidence", [0.5, 0.5, 0.0])
    with pytest.raises(ValueError, match="Give `policy` or the policy's fields"):
        EarlyExitModel(model, criterion="entropy", policy=ExitPolicy("confidence", [0.5, 0.0]))
    ee.policy = {"criterion": "entropy", "num_exits": 2, "thresholds": [0.4, 0.0]}
    assert (ee.criterion, ee.thresholds, ee.patience) == ("entropy", [0.4, 0.0], None)


def test_format1_sidecar_still_loads(tiny_vit, tmp_path):
    from conftest import build_tiny_vit

    model = DMPOClassifier(backbone=build_tiny_vit(seed=0), num_classes=3, exits=[1, 2, 4])
    path = str(tmp_path / "model.keras")
    EarlyExitModel(model).save(path)
    shutil.copy(os.path.join(FORMAT1, "patience.early_exit.json"), str(tmp_path / "model.early_exit.json"))
    ee = EarlyExitModel.load(path)
    assert (ee.criterion, ee.patience, ee.temperatures, ee.thresholds) == (
        "patience",
        2,
        [2.0, 1.5, 1.0],
        None,
    )
    assert ee.calibration.mode == "max_accuracy_drop" and ee.calibration.patience == 2


def test_format1_bundle_still_runs(tmp_path):
    pytest.importorskip("ai_edge_litert")
    from keras_dmpo.litert import StagedRuntime

    with open(os.path.join(FORMAT1, "bundle", "manifest.json")) as handle:
        manifest = json.load(handle)
    assert manifest["format_version"] == 1
    runtime = StagedRuntime(os.path.join(FORMAT1, "bundle"), num_threads=1)
    assert runtime.policy == ExitPolicy("entropy", manifest["thresholds"])
    images = np.random.default_rng(0).random((12, 32, 32, 3)).astype("float32")
    out = runtime.predict(images)
    # The reference: every stage on every image, then the policy.
    probabilities, feed = [], images
    for k in range(runtime.num_exits):
        result = runtime._stages[k](**{runtime._input_name(k): feed})
        probabilities.append(result["probabilities"])
        feed = result.get("tokens")
    np.testing.assert_array_equal(out["exit_index"], runtime.policy.assign(np.stack(probabilities)))
    one = runtime.predict(images, batch_size=1)
    np.testing.assert_array_equal(one["exit_index"], out["exit_index"])


def test_policy_package_imports_numpy_only():
    code = (
        "import sys, keras_dmpo.policy, keras_dmpo.policy.calibrate;"
        "bad = [m for m in ('keras', 'keras_hub', 'tensorflow', 'jax', 'torch') if m in sys.modules];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_bad_values_give_value_errors_that_name_them():
    probabilities, labels = outputs()
    flops = [1.0, 2.0, 3.0]
    with pytest.raises(ValueError, match="`temperatures` must be None or 3 positive numbers"):
        ExitPolicy("confidence", temperatures=[10**400, 1, 1], num_exits=3)
    with pytest.raises(ValueError, match="`thresholds` must be 3 numbers"):
        ExitPolicy("confidence", thresholds=[10**400, 1, 0])
    with pytest.raises(ValueError, match="criterion='patience' needs at least 2 exits"):
        ExitPolicy("patience", num_exits=1)
    record = calibrate(probabilities, labels, flops, 3.0, 0.6).calibration.to_dict()
    with pytest.raises(ValueError, match="field 'exit_fractions' must be a list of numbers; got 5"):
        ExitPolicy("confidence", [0.5, 0.5, 0.0], calibration={**record, "exit_fractions": 5})
    with pytest.raises(ValueError, match="field 'mode' must be one of"):
        ExitPolicy("confidence", [0.5, 0.5, 0.0], calibration={**record, "mode": "fast"})
    # Above the full model is as unreachable as below the first exit.
    with pytest.raises(ValueError, match="is more than the full model spends"):
        calibrate(probabilities, labels, flops, 3.0, 4.0)
    assert calibrate_many_skips(probabilities, labels, flops, [0.6, 4.0]) == [False, True]
    # A malformed target is an error even where unreachable budgets are skipped.
    for criterion in ("confidence", "patience"):
        with pytest.raises(ValueError, match="`max_accuracy_drop` must be a fraction"):
            from keras_dmpo.policy import calibrate_many

            calibrate_many(
                probabilities,
                labels,
                flops,
                3.0,
                [{"max_accuracy_drop": "x"}],
                criterion,
                skip_unreachable=True,
            )


def calibrate_many_skips(probabilities, labels, flops, budgets):
    from keras_dmpo.policy import calibrate_many

    found = calibrate_many(probabilities, labels, flops, 3.0, budgets, skip_unreachable=True)
    return [policy is None for policy in found]


def test_route_returns_every_row_when_all_leave_at_once():
    probabilities, _ = outputs(n=5)
    policy = ExitPolicy("confidence", thresholds=[0.0, 0.0, 0.0])  # everyone leaves at exit 1
    exit_index, answers = route(policy, np.arange(5), lambda k, rows: (probabilities[k, rows], rows))
    assert exit_index.tolist() == [0] * 5
    np.testing.assert_array_equal(answers, probabilities[0])
