"""Exit scores, exit rule and threshold calibration (pure numpy)."""

import json
import time

import numpy as np
import pytest

from keras_dmpo.policy import rule as exit_rule
from keras_dmpo.policy import search as C

FLOPS = np.array([10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0])


def synthetic(num_samples=2000, num_exits=8, seed=0):
    """Deeper exits are more often right; confident samples are mostly right."""
    rng = np.random.default_rng(seed)
    difficulty = rng.uniform(size=num_samples)
    ability = np.linspace(0.35, 0.9, num_exits)[:, None]
    correct = difficulty[None, :] + rng.normal(0, 0.1, (num_exits, num_samples)) < ability
    scores = np.clip(0.45 + 0.35 * correct + rng.normal(0, 0.12, (num_exits, num_samples)), 0.01, 0.99)
    return scores, correct


def brute_force_exits(scores, thresholds):
    exits = []
    for n in range(scores.shape[1]):
        for k in range(scores.shape[0]):
            if k == scores.shape[0] - 1 or scores[k, n] >= thresholds[k]:
                exits.append(k)
                break
    return np.array(exits)


def test_exit_scores():
    probabilities = np.array([[[1.0, 0.0, 0.0], [1 / 3, 1 / 3, 1 / 3], [0.5, 0.5, 0.0]]])
    np.testing.assert_allclose(exit_rule.exit_scores(probabilities, "confidence"), [[1.0, 1 / 3, 0.5]])
    np.testing.assert_allclose(
        exit_rule.exit_scores(probabilities, "entropy"), [[1.0, 0.0, 1 - np.log(2) / np.log(3)]], atol=1e-12
    )
    with pytest.raises(ValueError, match="'margin'"):
        exit_rule.exit_scores(probabilities, "margin")
    # One exit's (N, C) outputs give (N,) scores: the same rule per stage.
    np.testing.assert_allclose(exit_rule.exit_scores(probabilities[0], "confidence"), [1.0, 1 / 3, 0.5])
    with pytest.raises(ValueError, match="shape"):
        exit_rule.exit_scores(np.float64(0.5), "confidence")


def test_apply_thresholds_matches_brute_force():
    scores, _ = synthetic(300, 4)
    rng = np.random.default_rng(1)
    for _ in range(5):
        thresholds = rng.uniform(size=4)
        np.testing.assert_array_equal(
            exit_rule.assign_exits(scores, thresholds), brute_force_exits(scores, thresholds)
        )
    # The last threshold is ignored: the last exit always answers.
    assert (exit_rule.assign_exits(scores, [1.0] * 4) == 3).sum() == (scores[:3] < 1.0).all(0).sum()


@pytest.mark.parametrize(
    "thresholds, match",
    [
        ([0.5, 0.5], "has 2 values; expected 4"),
        ([0.5, 1.5, 0.5, 0.0], "must be in \\[0, 1\\].*1.5"),
        ([0.5, -0.1, 0.5, 0.0], "-0.1"),
        ([0.5, float("nan"), 0.5, 0.0], "nan"),
        ("abc", "thresholds"),
    ],
)
def test_threshold_errors(thresholds, match):
    scores, _ = synthetic(10, 4)
    with pytest.raises(ValueError, match=match):
        exit_rule.assign_exits(scores, thresholds)


def test_expected_flops_and_accuracy_helpers():
    correct = np.array([[True, False, False], [True, True, False]])
    exits = np.array([0, 1, 1])
    assert C.expected_flops(exits, [10, 20]) == pytest.approx(50 / 3)
    assert C.exit_accuracy(exits, correct) == pytest.approx(2 / 3)
    assert C.exit_fractions(exits, 2) == pytest.approx([1 / 3, 2 / 3])


def evaluate(scores, correct, thresholds):
    exits = exit_rule.assign_exits(scores, thresholds)
    return C.exit_accuracy(exits, correct), C.expected_flops(exits, FLOPS[: scores.shape[0]])


@pytest.mark.parametrize("budget", [15.0, 30.0, 45.0, 70.0])
def test_calibration_respects_budget_and_beats_baselines(budget):
    scores, correct = synthetic()
    result = C.calibrate_thresholds(scores, correct, FLOPS, budget, full_model_flops=72.0)
    accuracy, flops = evaluate(scores, correct, result.thresholds)
    assert flops <= budget + 1e-9
    assert result.expected_flops == pytest.approx(flops)
    assert result.validation_accuracy == pytest.approx(accuracy)
    assert result.expected_fraction == pytest.approx(flops / 72.0)
    assert sum(result.exit_fractions) == pytest.approx(1.0)
    # Baseline 1: the best single exit that fits in the budget.
    single = max(correct[k].mean() for k in range(8) if FLOPS[k] <= budget)
    assert accuracy >= single
    # Baseline 2: MSDNet's geometric start, which also fits in the budget.
    start = C.geometric_thresholds(scores, FLOPS, budget)
    start_accuracy, start_flops = evaluate(scores, correct, start)
    assert start_flops <= budget + 1e-9
    assert accuracy >= start_accuracy
    # Early exits help here: a mixed policy beats the best single exit.
    if budget < 70:
        assert accuracy > single


def test_calibration_is_deterministic_and_uses_midpoints():
    scores, correct = synthetic(seed=3)
    first = C.calibrate_thresholds(scores, correct, FLOPS, 35.0)
    second = C.calibrate_thresholds(scores.copy(), correct.copy(), FLOPS, 35.0)
    assert first.to_dict() == second.to_dict()
    assert first.thresholds[-1] == 0.0
    for k, threshold in enumerate(first.thresholds[:-1]):
        assert not np.any(scores[k] == threshold), (k, threshold)
    # A tiny perturbation of the scores changes no exit.
    exits = exit_rule.assign_exits(scores, first.thresholds)
    for noise in (1e-7, -1e-7):
        np.testing.assert_array_equal(
            exit_rule.assign_exits(np.clip(scores + noise, 0, 1), first.thresholds), exits
        )


def test_budget_extremes():
    scores, correct = synthetic(500)
    lowest = C.calibrate_thresholds(scores, correct, FLOPS, FLOPS[0])
    assert lowest.exit_fractions[0] == 1.0
    highest = C.calibrate_thresholds(scores, correct, FLOPS, FLOPS[-1])
    assert highest.validation_accuracy >= correct[-1].mean()


def test_result_round_trips_through_json():
    scores, correct = synthetic(400)
    result = C.calibrate_thresholds(scores, correct, FLOPS, 40.0, full_model_flops=75.0)
    data = json.loads(json.dumps(result.to_dict()))
    assert C.CalibrationResult.from_dict(data) == result
    with pytest.raises(ValueError, match="Unknown CalibrationResult keys"):
        C.CalibrationResult.from_dict({**data, "extra": 1})


@pytest.mark.parametrize(
    "budget, full, match",
    [
        (5.0, None, r"`flops_budget` .*5\.0.* outside the valid range \[10, 80\]"),
        (81.0, None, r"`flops_budget` .*81\.0.*\[10, 80\].*last exit"),
        (95.0, 90.0, r"`flops_budget` .*\[10, 90\].*full model.*1\.056"),
        (float("nan"), None, r"`flops_budget` .*nan"),
    ],
)
def test_budget_errors(budget, full, match):
    scores, correct = synthetic(50)
    with pytest.raises(ValueError, match=match):
        C.calibrate_thresholds(scores, correct, FLOPS, budget, full_model_flops=full)


def test_data_errors():
    scores, correct = synthetic(50)
    with pytest.raises(ValueError, match="non-empty"):
        C.calibrate_thresholds(np.zeros((8, 0)), np.zeros((8, 0), bool), FLOPS, 30.0)
    with pytest.raises(ValueError, match="`correct` has shape"):
        C.calibrate_thresholds(scores, correct[:, :10], FLOPS, 30.0)
    with pytest.raises(ValueError, match="`flops_per_exit` must be 8"):
        C.calibrate_thresholds(scores, correct, FLOPS[:3], 30.0)
    with pytest.raises(ValueError, match="non-decreasing"):
        C.calibrate_thresholds(scores, correct, FLOPS[::-1], 30.0)
    bad = scores.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        C.calibrate_thresholds(bad, correct, FLOPS, 30.0)


def test_calibration_is_fast_at_validation_scale():
    scores, correct = synthetic(10_000, 8, seed=5)
    start = time.perf_counter()
    result = C.calibrate_thresholds(scores, correct, FLOPS, 30.0)
    elapsed = time.perf_counter() - start
    assert result.expected_flops <= 30.0 + 1e-9
    assert elapsed < 20.0  # ~1 s measured on 2 busy cores; generous for CI


def test_budget_ladder_never_loses_accuracy_as_the_budget_grows():
    budgets = np.linspace(10.0, 80.0, 15)
    for seed in (0, 3):
        scores, correct = synthetic(300, seed=seed)
        independent = [C.calibrate_thresholds(scores, correct, FLOPS, b) for b in budgets]
        ladder = C.calibrate_budgets(scores, correct, FLOPS, budgets)
        accuracies = [r.validation_accuracy for r in ladder]
        assert np.all(np.diff(accuracies) >= 0), (seed, accuracies)
        for result, alone, budget in zip(ladder, independent, budgets):
            assert result.validation_accuracy >= alone.validation_accuracy
            assert result.expected_flops <= budget + 1e-9
            assert result.budget == budget
    # The case the ladder exists for: on seed 3, searching each budget alone
    # ends lower at some larger budget.
    assert np.any(np.diff([r.validation_accuracy for r in independent]) < 0)


def test_budget_ladder_keeps_the_callers_order():
    scores, correct = synthetic(300, seed=1)
    ladder = C.calibrate_budgets(scores, correct, FLOPS, [60.0, 20.0, 40.0], full_model_flops=80.0)
    ascending = C.calibrate_budgets(scores, correct, FLOPS, [20.0, 40.0, 60.0], full_model_flops=80.0)
    assert [r.to_dict() for r in (ladder[1], ladder[2], ladder[0])] == [r.to_dict() for r in ascending]
    for budgets in ([20.0, 90.0], [5.0, 20.0]):  # above the full model; below the first exit
        with pytest.raises(ValueError, match="`flops_budget`.*outside the valid range"):
            C.calibrate_budgets(scores, correct, FLOPS, budgets)


def test_calibrate_many_skips_only_unreachable_budgets():
    from keras_dmpo import policy

    rng = np.random.default_rng(3)
    probabilities = rng.dirichlet(np.ones(4), size=(3, 200))
    labels = probabilities[2].argmax(-1)
    flops = [10.0, 30.0, 80.0]
    # 0.1 of 80 FLOPs is 8, below the first exit's 10: unreachable.
    assert not policy.reachable(0.1, flops, 80.0) and policy.reachable(0.125, flops, 80.0)
    found = policy.calibrate_many(probabilities, labels, flops, 80.0, [0.5, 0.1, 0.25], skip_unreachable=True)
    assert found[1] is None and found[0].calibration.expected_flops <= 40.0 + 1e-9
    alone = policy.calibrate(probabilities, labels, flops, 80.0, 0.25)
    assert found[2] == alone and found[2].calibration.to_dict() == alone.calibration.to_dict()
    with pytest.raises(ValueError, match=r"`flops_budget`=0.1 .* is below the cost of the first exit"):
        policy.calibrate_many(probabilities, labels, flops, 80.0, [0.5, 0.1])


def test_calibration_starts_are_kept_when_they_fit():
    scores, correct = synthetic(400, seed=2)
    # A start the built-in ones would not find: exits chosen by a fixed rule.
    start = [0.7, 0.65, 0.6, 0.55, 0.5, 0.45, 0.4, 0.0]
    start_accuracy, start_flops = evaluate(scores, correct, start)
    result = C.calibrate_thresholds(scores, correct, FLOPS, start_flops, starts=[start])
    assert result.validation_accuracy >= start_accuracy
    assert result.expected_flops <= start_flops + 1e-9
    # Thresholds stay at midpoints between observed scores.
    for k, threshold in enumerate(result.thresholds[:-1]):
        assert not np.any(scores[k] == threshold)
    # A start over the budget is skipped, not an error.
    C.calibrate_thresholds(scores, correct, FLOPS, 12.0, starts=[start])


@pytest.mark.parametrize(
    "starts, match",
    [
        ([[0.5] * 3], r"`starts\[0\]` must be 8 thresholds in \[0, 1\]"),
        ([[0.5] * 7 + [1.5]], r"`starts\[0\]` must be 8 thresholds"),
        ([[0.5] * 8, ["a"] * 8], r"`starts\[1\]` must be 8 thresholds"),
    ],
)
def test_calibration_start_errors(starts, match):
    scores, correct = synthetic(50)
    with pytest.raises(ValueError, match=match):
        C.calibrate_thresholds(scores, correct, FLOPS, 30.0, starts=starts)
