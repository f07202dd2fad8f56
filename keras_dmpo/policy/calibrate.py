"""Calibrating an exit policy from stored per-exit outputs (numpy only).

The one entry point for ``EarlyExitModel.calibrate``, the CLI and the
benchmarks. It needs the exits' validation probabilities and the FLOPs of
each exit, never the model itself, so stored outputs can be re-calibrated
anywhere, including where only ``keras_dmpo.litert`` is installed.
"""

import math
import numbers

import numpy as np

from keras_dmpo.policy import search
from keras_dmpo.policy.curves import AccuracyFlopsCurve
from keras_dmpo.policy.exit_policy import ExitPolicy
from keras_dmpo.policy.record import exit_accuracy, exit_fractions, expected_flops

DEFAULT_FLOPS_BUDGET = 0.3
DEFAULT_BUDGETS = (0.25, 0.3, 0.4, 0.5, 0.6, 0.75, 0.9, 1.0)


def budget_flops(flops_budget, flops_per_exit, full_model_flops, argument="flops_budget"):
    """A budget as absolute FLOPs per image.

    Args:
        flops_budget: a fraction in (0, 1] of ``full_model_flops``, or
            absolute FLOPs per image (> 1).
        flops_per_exit: K cumulative FLOPs per image.
        full_model_flops: what 100% means.
        argument: the name used in errors.

    Raises:
        ValueError: not a positive number, or below the first exit's cost:
            no sample could answer within it (the one place that decides
            that a budget is unreachable).
    """
    if isinstance(flops_budget, bool) or not isinstance(flops_budget, numbers.Real):
        raise ValueError(f"`{argument}` must be a number; got {flops_budget!r}.")
    budget = float(flops_budget)
    if not math.isfinite(budget) or budget <= 0:
        raise ValueError(
            f"`{argument}` must be a fraction in (0, 1] of the full model's FLOPs "
            f"(or absolute FLOPs > 1); got {flops_budget!r}."
        )
    absolute = budget * float(full_model_flops) if budget <= 1 else budget
    first = float(flops_per_exit[0])
    most = max(float(flops_per_exit[-1]), float(full_model_flops))
    if absolute > most * (1 + search.BUDGET_RTOL):
        raise ValueError(
            f"`{argument}`={flops_budget!r} ({absolute / 1e6:.3f} MFLOPs) is more than the full "
            f"model spends ({most / 1e6:.3f} MFLOPs): give a fraction in (0, 1] or absolute FLOPs "
            "up to that."
        )
    if absolute < first * (1 - search.BUDGET_RTOL):
        raise ValueError(
            f"`{argument}`={flops_budget!r} ({absolute / 1e6:.3f} MFLOPs) is below the cost "
            f"of the first exit ({first / 1e6:.3f} MFLOPs = "
            f"{first / float(full_model_flops):.1%} of the full model): no sample could answer "
            "within it."
        )
    return absolute


def reachable(flops_budget, flops_per_exit, full_model_flops):
    """Whether ``budget_flops`` accepts this budget."""
    try:
        budget_flops(flops_budget, flops_per_exit, full_model_flops)
    except ValueError:
        return False
    return True


def check_accuracy_drop(max_accuracy_drop):
    """A drop in [0, 1) (a fraction: 0.01 is one point), or a ``ValueError``."""
    return search.check_accuracy_drop(max_accuracy_drop)


def make_target(flops_budget=None, max_accuracy_drop=None):
    """The calibration target: ``{"flops_budget": b}`` or
    ``{"max_accuracy_drop": d}``; neither given: the default budget, 0.3."""
    if flops_budget is not None and max_accuracy_drop is not None:
        raise ValueError(
            f"Give one of `flops_budget` and `max_accuracy_drop`, not both; got flops_budget="
            f"{flops_budget!r} and max_accuracy_drop={max_accuracy_drop!r}."
        )
    if max_accuracy_drop is not None:
        return {"max_accuracy_drop": check_accuracy_drop(max_accuracy_drop)}
    return {"flops_budget": DEFAULT_FLOPS_BUDGET if flops_budget is None else flops_budget}


def _target(target):
    if isinstance(target, dict) and len(target) == 1 and set(target) <= {"flops_budget", "max_accuracy_drop"}:
        if "max_accuracy_drop" in target:
            return {"max_accuracy_drop": check_accuracy_drop(target["max_accuracy_drop"])}
        return target
    if isinstance(target, numbers.Real) and not isinstance(target, bool):
        return {"flops_budget": target}
    raise ValueError(
        '`target` must be a FLOPs budget (a number), {"flops_budget": b} or '
        f'{{"max_accuracy_drop": d}}; got {target!r}.'
    )


def _check_outputs(probabilities, labels, flops_per_exit, argument="probabilities"):
    probabilities = np.asarray(probabilities)
    labels = np.asarray(labels).reshape(-1).astype(np.int64)
    if probabilities.ndim != 3 or probabilities.shape[1] != labels.size or labels.size == 0:
        raise ValueError(
            f"`{argument}` must be (num_exits, num_samples, num_classes) with one row per label; "
            f"got shape {probabilities.shape} for {labels.size} labels."
        )
    if len(flops_per_exit) != probabilities.shape[0]:
        raise ValueError(
            f"`flops_per_exit` has {len(flops_per_exit)} values; `{argument}` has "
            f"{probabilities.shape[0]} exits."
        )
    if labels.min() < 0 or labels.max() >= probabilities.shape[2]:
        raise ValueError(
            f"`labels` must be class indices in [0, {probabilities.shape[2]}); got values in "
            f"[{labels.min()}, {labels.max()}]."
        )
    return probabilities, labels


def calibrate(
    probabilities, labels, flops_per_exit, full_model_flops, target, criterion="confidence", temperatures=None
):
    """The exit policy for a FLOPs budget or an accuracy target.

    Args:
        probabilities: ``(K, N, C)`` validation probabilities of every exit.
        labels: ``(N,)`` integer labels.
        flops_per_exit: K cumulative FLOPs per image.
        full_model_flops: FLOPs of the full model (100%).
        target: a FLOPs budget (a fraction in (0, 1] or absolute FLOPs), or
            ``{"flops_budget": b}``: the most accurate policy whose expected
            FLOPs fit; ``{"max_accuracy_drop": d}``: the fewest expected
            FLOPs whose accuracy is at least the last exit's minus ``d``.
        criterion: ``"confidence"``, ``"entropy"`` (thresholds are searched)
            or ``"patience"`` (the patience is).
        temperatures: None, or K per-exit temperatures applied first.

    Returns:
        An ``ExitPolicy`` whose ``calibration`` records what it gives on this
        validation data.

    Example:

    >>> rng = np.random.default_rng(0)
    >>> probabilities = rng.dirichlet(np.ones(3), size=(2, 50))
    >>> labels = probabilities[1].argmax(-1)
    >>> policy = calibrate(probabilities, labels, [1.0, 2.0], 2.0, target=0.75)
    >>> policy.calibration.expected_flops <= 1.5
    True
    """
    return calibrate_many(
        probabilities, labels, flops_per_exit, full_model_flops, [target], criterion, temperatures
    )[0]


def calibrate_many(
    probabilities,
    labels,
    flops_per_exit,
    full_model_flops,
    targets,
    criterion="confidence",
    temperatures=None,
    skip_unreachable=False,
):
    """``calibrate`` for several targets at once: budgets are searched from
    the smallest up, each also starting from the previous one's thresholds,
    so that a larger budget never gets a lower validation accuracy.

    A budget below the first exit's cost (or, for ``"patience"``, below the
    cheapest patience) raises, or gives None with ``skip_unreachable``.
    """
    probabilities, labels = _check_outputs(probabilities, labels, flops_per_exit)
    template = ExitPolicy(criterion, temperatures=temperatures, num_exits=probabilities.shape[0])
    targets = [_target(t) for t in targets]
    full = float(full_model_flops)
    flops = [float(f) for f in flops_per_exit]
    absolute = []
    for t in targets:
        if "flops_budget" not in t:
            absolute.append(None)
        elif skip_unreachable and not reachable(t["flops_budget"], flops, full):
            absolute.append("unreachable")
        else:
            absolute.append(budget_flops(t["flops_budget"], flops, full))
    correct = probabilities.argmax(-1) == labels[None, :]
    records = [None] * len(targets)
    if criterion == "patience":
        predicted = probabilities.argmax(-1)
        for i, (t, budget) in enumerate(zip(targets, absolute)):
            if budget == "unreachable":
                continue
            try:
                records[i] = search.calibrate_patience(
                    predicted,
                    correct,
                    flops,
                    flops_budget=budget,
                    max_accuracy_drop=t.get("max_accuracy_drop"),
                    full_model_flops=full,
                )
            except ValueError:
                # Only a budget below the cheapest patience is unreachable.
                if not (skip_unreachable and "flops_budget" in t):
                    raise
    else:
        scores = template.all_scores(probabilities)
        budgets = [i for i, b in enumerate(absolute) if b not in (None, "unreachable")]
        found = search.calibrate_budgets(scores, correct, flops, [absolute[i] for i in budgets], full)
        for i, record in zip(budgets, found):
            records[i] = record
        for i, t in enumerate(targets):
            if "max_accuracy_drop" in t:
                records[i] = search.calibrate_for_accuracy(
                    scores, correct, flops, t["max_accuracy_drop"], full_model_flops=full
                )
    return [
        None
        if record is None
        else template.replace(thresholds=record.thresholds, patience=record.patience, calibration=record)
        for record in records
    ]


def curve(
    val_probabilities,
    val_labels,
    test_probabilities,
    test_labels,
    flops_per_exit,
    full_model_flops,
    exits,
    budgets=DEFAULT_BUDGETS,
    criterion="confidence",
    temperatures=None,
):
    """Accuracy against FLOPs over a sweep of budgets: each policy
    calibrated on validation, scored on test, beside each exit alone.

    Budgets that cannot be reached are left out. Returns an
    ``AccuracyFlopsCurve``.
    """
    test_probs, test_labels = _check_outputs(
        test_probabilities, test_labels, flops_per_exit, "test_probabilities"
    )
    budgets = list(budgets)
    policies = calibrate_many(
        val_probabilities,
        val_labels,
        flops_per_exit,
        full_model_flops,
        budgets,
        criterion,
        temperatures,
        skip_unreachable=True,
    )
    full = float(full_model_flops)
    correct = test_probs.argmax(-1) == test_labels[None, :]
    rows = []
    for budget, policy in zip(budgets, policies):
        if policy is None:
            continue
        index = policy.assign(test_probs)
        record = policy.calibration
        rows.append(
            {
                "budget": float(budget),
                "thresholds": None if policy.thresholds is None else list(policy.thresholds),
                "validation_accuracy": float(record.validation_accuracy),
                "validation_fraction": float(record.expected_flops / full),
                "test_accuracy": exit_accuracy(index, correct),
                "test_fraction": expected_flops(index, flops_per_exit) / full,
                "exit_fractions": exit_fractions(index, policy.num_exits),
                "policy": policy.to_dict(),
            }
        )
    single = [
        {
            "exit": int(block),
            "fraction": float(flops_per_exit[k] / full),
            "test_accuracy": float(correct[k].mean()),
        }
        for k, block in enumerate(exits)
    ]
    return AccuracyFlopsCurve(rows=rows, single_exits=single, criterion=criterion)
