"""The search for an exit policy's parameters on validation data (numpy).

The rule that thresholds drive (score each exit, the first exit whose score
passes its threshold answers, the last exit always answers) lives in
``keras_dmpo.policy.rule``; this module searches thresholds (or the
patience) for it. ``keras_dmpo.policy.calibrate`` is the entry point that
callers use.

``calibrate_thresholds`` starts from MSDNet's geometric exit proportions
(Huang et al., 2018) and improves them by a deterministic coordinate search.
``calibrate_budgets`` calibrates several budgets from the smallest up, each
search also starting from the previous budget's thresholds, so that a larger
budget never ends at a lower validation accuracy.
Thresholds are always placed at midpoints between observed scores, so a tiny
numerical difference (Keras vs LiteRT, ~1e-6) cannot flip a validation
sample's exit.
"""

import dataclasses
import math

import numpy as np

from keras_dmpo.policy import rule
from keras_dmpo.policy.record import CalibrationResult, exit_accuracy, exit_fractions, expected_flops

# Relative slack when comparing FLOPs with the budget (float rounding only).
BUDGET_RTOL = 1e-9


def _candidates(values, max_candidates):
    """Thresholds between observed scores of one exit, sorted ascending.

    All midpoints between consecutive distinct values, subsampled to at most
    ``max_candidates`` at evenly spaced ranks, plus the two ends: one below
    every score (everyone exits) and one above (nobody exits). The ends are
    ``min/2`` and ``(max+1)/2``; they equal an observed score only when that
    score is exactly 0 or 1 (thresholds must stay in [0, 1]).
    """
    distinct = np.unique(values)
    midpoints = (distinct[:-1] + distinct[1:]) / 2.0
    if midpoints.size > max_candidates:
        ranks = np.linspace(0, midpoints.size - 1, max_candidates).round().astype(int)
        midpoints = midpoints[np.unique(ranks)]
    low = distinct[0] / 2.0
    high = (distinct[-1] + 1.0) / 2.0
    return np.unique(np.concatenate([[low], midpoints, [high]]))


def _snap(threshold, values):
    """Move ``threshold`` to the midpoint between the observed scores around it."""
    distinct = np.unique(values)
    above = np.searchsorted(distinct, threshold, side="left")
    if above == 0:
        return distinct[0] / 2.0
    if above == distinct.size:
        return (distinct[-1] + 1.0) / 2.0
    return (distinct[above - 1] + distinct[above]) / 2.0


def _evaluate(scores, correct, flops, thresholds):
    exits = rule.first_exit(rule.passes(scores, thresholds[:, None]))
    columns = np.arange(scores.shape[1])
    return int(correct[exits, columns].sum()), float(flops[exits].sum()), exits


def geometric_thresholds(scores, flops_per_exit, budget_flops):
    """MSDNet's start: exit proportions ``q_k ∝ q^k`` with expected cost = budget.

    ``q`` is found by bisection. Exit k then takes the best-scoring
    survivors until the cumulative exit count reaches ``ceil(N * sum q_j)``
    (rounding up keeps the cost within the budget), with the threshold at a
    midpoint between observed scores.

    Returns:
        K thresholds (the last 0.0).
    """
    scores = np.asarray(scores, dtype=np.float64)
    flops = np.asarray(flops_per_exit, dtype=np.float64)
    num_exits, num_samples = scores.shape
    powers = np.arange(num_exits, dtype=np.float64)

    def proportions(log_q):
        weights = np.exp(powers * log_q - np.max(powers * log_q))
        return weights / weights.sum()

    low, high = -60.0, 60.0  # log q: all at exit 1 .. all at exit K
    for _ in range(200):
        middle = (low + high) / 2.0
        if proportions(middle) @ flops > budget_flops:
            high = middle
        else:
            low = middle
    cumulative = np.cumsum(proportions(low))
    thresholds = np.zeros(num_exits)
    alive = np.ones(num_samples, bool)
    exited = 0
    for k in range(num_exits - 1):
        target = min(num_samples, math.ceil(cumulative[k] * num_samples - 1e-9))
        need = target - exited
        survivors = scores[k, alive]
        if survivors.size == 0 or need <= 0:  # nobody leaves here
            threshold = np.nextafter(survivors.max() if survivors.size else 1.0, 2.0)
        elif need >= survivors.size:  # everyone left leaves here
            threshold = survivors.min()
        else:  # the `need` best leave (and anyone tied with the last of them)
            threshold = np.sort(survivors)[::-1][need - 1]
        # Same survivors pass (>= is kept), but at a midpoint between scores.
        threshold = min(1.0, _snap(threshold, scores[k]))
        thresholds[k] = threshold
        leaving = alive & rule.passes(scores[k], threshold)
        exited += int(leaving.sum())
        alive &= ~leaving
    return thresholds


def _coordinate_search(scores, correct, flops, budget_total, thresholds, candidates, max_sweeps):
    """Improve thresholds one exit at a time while the budget holds.

    Objective: most correct samples, then fewest FLOPs. For exit k, the
    samples that reach it and their fate if they do not leave there are fixed
    by the other thresholds, so every candidate is scored at once with
    cumulative sums over the survivors sorted by score.
    """
    num_exits, num_samples = scores.shape
    columns = np.arange(num_samples)
    best_correct, best_flops, _ = _evaluate(scores, correct, flops, thresholds)
    for _ in range(max_sweeps):
        improved = False
        for k in range(num_exits - 1):
            passed = rule.passes(scores, thresholds[:, None])
            before = passed[:k].any(axis=0)
            # Where a sample goes if it does not leave at k.
            fallback = k + 1 + rule.first_exit(passed[k + 1 :])
            fixed = before
            first = rule.first_exit(passed)
            fixed_correct = int(correct[first[fixed], columns[fixed]].sum())
            fixed_flops = float(flops[first[fixed]].sum())
            reach = ~before
            s = scores[k, reach]
            stay_correct = correct[fallback[reach], columns[reach]].astype(np.int64)
            stay_flops = flops[fallback[reach]]
            leave_correct = correct[k, columns[reach]].astype(np.int64)
            order = np.argsort(-s, kind="stable")
            s_sorted = s[order]
            # Prefix sums over survivors by decreasing score: the first m leave.
            gain_correct = np.concatenate([[0], np.cumsum(leave_correct[order] - stay_correct[order])])
            gain_flops = np.concatenate([[0.0], np.cumsum(flops[k] - stay_flops[order])])
            base_correct = fixed_correct + int(stay_correct.sum())
            base_flops = fixed_flops + float(stay_flops.sum())
            cand = candidates[k]
            # How many survivors pass each candidate: rule.passes (>=),
            # counted on sorted scores for all candidates at once.
            leaving = np.searchsorted(-s_sorted, -cand, side="right")
            totals_correct = base_correct + gain_correct[leaving]
            totals_flops = base_flops + gain_flops[leaving]
            feasible = totals_flops <= budget_total
            if not feasible.any():
                continue
            # Best: most correct, then fewest FLOPs, then the lowest candidate.
            key_correct = np.where(feasible, totals_correct, -1)
            top = key_correct.max()
            pick = np.flatnonzero(key_correct == top)
            pick = pick[np.argmin(totals_flops[pick])]  # first (lowest) on ties
            if (top, -totals_flops[pick]) > (best_correct, -best_flops + 1e-6 * abs(best_flops)):
                thresholds = thresholds.copy()
                thresholds[k] = cand[pick]
                best_correct, best_flops = int(top), float(totals_flops[pick])
                improved = True
        if not improved:
            break
    return thresholds, best_correct, best_flops


def calibrate_thresholds(
    scores,
    correct,
    flops_per_exit,
    budget_flops,
    full_model_flops=None,
    max_candidates=96,
    max_sweeps=10,
    starts=None,
):
    """Thresholds that maximise validation accuracy with mean FLOPs <= budget.

    1. Start: MSDNet's geometric exit proportions (``geometric_thresholds``),
       each single exit affordable within the budget (everyone leaves
       there), and any ``starts`` given (for example a smaller budget's
       thresholds, which fit in this one).
    2. From each start within the budget, a deterministic coordinate
       search: for each early exit in turn, try every candidate threshold
       (midpoints between the sorted observed scores of that exit,
       subsampled to ``max_candidates`` evenly spaced ranks, plus "everyone"
       and "nobody" leaves), keep the one with the most correct answers
       (ties: fewer FLOPs) among those within the budget; sweep until
       nothing improves (``max_sweeps`` at most).
    3. Return the best result over the starts.

    Args:
        scores: ``(K, N)`` validation scores in [0, 1] (``rule.exit_scores``).
        correct: ``(K, N)`` bool, whether exit k's prediction is right.
        flops_per_exit: ``K`` cumulative FLOPs per sample, non-decreasing.
        budget_flops: mean FLOPs per sample allowed (absolute), in
            ``[flops_per_exit[0], max(flops_per_exit[-1], full_model_flops)]``.
        full_model_flops: optional, "100%", for ``expected_fraction`` and
            the valid budget range.
        max_candidates: candidate thresholds per exit.
        max_sweeps: coordinate-search sweeps at most.
        starts: optional further starting points, a list of K-threshold
            sequences in [0, 1]. Each is moved to the score midpoints that
            keep its exits; starts over the budget are skipped. The search
            only improves on a start, so the result is at least as accurate
            on this data as any start that fits.

    Returns:
        ``CalibrationResult``; its last threshold is 0.0 (ignored).

    Raises:
        ValueError: empty or mismatched data, NaN scores, bad FLOPs, a
            budget outside the valid range (naming ``flops_budget``), or a
            malformed start (naming ``starts``).
    """
    scores = rule.check_scores(scores)
    correct = np.asarray(correct)
    if correct.shape != scores.shape:
        raise ValueError(
            f"`correct` has shape {correct.shape}; expected the shape of `scores`, {scores.shape}."
        )
    correct = correct.astype(bool)
    num_exits, num_samples = scores.shape
    flops = np.asarray(flops_per_exit, dtype=np.float64).reshape(-1)
    if flops.size != num_exits or not np.all(np.isfinite(flops)) or np.any(flops <= 0):
        raise ValueError(
            f"`flops_per_exit` must be {num_exits} positive numbers (one per "
            f"exit); got {list(flops_per_exit)!r}."
        )
    if np.any(np.diff(flops) < 0):
        raise ValueError(f"`flops_per_exit` must be cumulative (non-decreasing); got {flops.tolist()}.")
    upper = flops[-1] if full_model_flops is None else max(flops[-1], float(full_model_flops))
    budget = float(budget_flops)
    slack = BUDGET_RTOL * upper
    if not (flops[0] - slack <= budget <= upper + slack):  # also rejects NaN
        fraction = ""
        if full_model_flops is not None:
            fraction = (
                f" (as a fraction of the full model: got {budget / full_model_flops:.4g}, "
                f"valid [{flops[0] / full_model_flops:.4g}, {upper / full_model_flops:.4g}])"
            )
        raise ValueError(
            f"`flops_budget` (budget_flops={budget_flops!r} FLOPs per sample) is "
            f"outside the valid range [{flops[0]:.6g}, {upper:.6g}]: from the "
            f"first exit's cost to the {'full model' if full_model_flops else 'last exit'}"
            f"{fraction}."
        )
    budget_total = budget * num_samples * (1 + BUDGET_RTOL)

    given = _check_starts(starts, scores)
    candidates = [_candidates(scores[k], max_candidates) for k in range(num_exits)]
    all_starts = [geometric_thresholds(scores, flops, budget)]
    for k in range(num_exits):
        if flops[k] <= budget * (1 + BUDGET_RTOL):
            single = np.array([c[-1] for c in candidates])  # nobody leaves
            single[k] = candidates[k][0]  # everyone leaves at k
            all_starts.append(single)
    all_starts += given
    best = None
    for start in all_starts:
        start = start.copy()
        start[-1] = 0.0
        _, start_flops, _ = _evaluate(scores, correct, flops, start)
        if start_flops > budget_total:
            continue
        thresholds, n_correct, total_flops = _coordinate_search(
            scores, correct, flops, budget_total, start, candidates, max_sweeps
        )
        key = (n_correct, -total_flops)
        if best is None or key > best[0]:
            best = (key, thresholds)
    thresholds = best[1]
    thresholds[-1] = 0.0
    _, total_flops, exits = _evaluate(scores, correct, flops, thresholds)
    mean_flops = total_flops / num_samples
    return CalibrationResult(
        thresholds=[float(t) for t in thresholds],
        expected_flops=mean_flops,
        expected_fraction=None if full_model_flops is None else mean_flops / float(full_model_flops),
        validation_accuracy=exit_accuracy(exits, correct),
        exit_fractions=exit_fractions(exits, num_exits),
        budget=budget,
        full_model_flops=None if full_model_flops is None else float(full_model_flops),
        num_samples=num_samples,
    )


def _check_starts(starts, scores):
    """``starts`` as arrays at score midpoints (same exits), or a ``ValueError``."""
    if starts is None:
        return []
    num_exits = scores.shape[0]
    checked = []
    for i, start in enumerate(starts):
        try:
            values = np.asarray(start, dtype=np.float64).reshape(-1)
        except (TypeError, ValueError):
            values = np.array([np.nan])
        if values.size != num_exits or not np.all((values >= 0) & (values <= 1)):
            raise ValueError(
                f"`starts[{i}]` must be {num_exits} thresholds in [0, 1] (one per exit); got {start!r}."
            )
        # A midpoint between observed scores keeps every sample's exit (>=
        # passes) and the "tiny numerical difference" guarantee of the module.
        checked.append(np.array([_snap(t, scores[k]) for k, t in enumerate(values)]))
    return checked


def calibrate_budgets(
    scores, correct, flops_per_exit, budgets_flops, full_model_flops=None, max_candidates=96, max_sweeps=10
):
    """``calibrate_thresholds`` for several budgets, monotone in the budget.

    Budgets are searched from the smallest up; each search also starts from
    the thresholds found for the previous (smaller) budget, which fit in the
    larger one. A larger budget therefore never ends at a lower validation
    accuracy than a smaller one, which independent searches (a local search
    from fixed starts) do not guarantee.

    Args:
        scores, correct, flops_per_exit, full_model_flops, max_candidates,
            max_sweeps: as in ``calibrate_thresholds``.
        budgets_flops: absolute budgets (FLOPs per sample), any order.

    Returns:
        A list in the order of ``budgets_flops``: a ``CalibrationResult``
        per budget.

    Raises:
        ValueError: as ``calibrate_thresholds`` (a budget outside the valid
            range, bad data).
    """
    budgets = [float(b) for b in budgets_flops]
    results = [None] * len(budgets)
    previous = None
    for i in sorted(range(len(budgets)), key=lambda j: budgets[j]):
        result = calibrate_thresholds(
            scores,
            correct,
            flops_per_exit,
            budgets[i],
            full_model_flops=full_model_flops,
            max_candidates=max_candidates,
            max_sweeps=max_sweeps,
            starts=None if previous is None else [previous.thresholds],
        )
        results[i] = previous = result
    return results


def check_accuracy_drop(max_accuracy_drop):
    """A drop in [0, 1) (a fraction: 0.01 is one point), or a ``ValueError``."""
    try:
        value = float(max_accuracy_drop)
    except (TypeError, ValueError):
        value = float("nan")
    if not 0.0 <= value < 1.0:  # also rejects NaN
        raise ValueError(
            f"`max_accuracy_drop` must be a fraction in [0, 1) (0.01 = one point of accuracy); "
            f"got {max_accuracy_drop!r}."
        )
    return value


def calibrate_for_accuracy(
    scores, correct, flops_per_exit, max_accuracy_drop, full_model_flops=None, iterations=30
):
    """Thresholds with the fewest expected FLOPs whose validation accuracy is
    at least the last exit's minus ``max_accuracy_drop``.

    Searches the FLOPs budget: for a budget, ``calibrate_thresholds`` finds
    the most accurate thresholds within it, so the smallest budget whose
    result meets the target is found by bisection (deterministic; thresholds
    at score midpoints as in the budget mode). Of every result that meets
    the target, the one with the fewest expected FLOPs is returned (ties:
    the more accurate).

    Args:
        scores, correct, flops_per_exit, full_model_flops: as in
            ``calibrate_thresholds``.
        max_accuracy_drop: fraction in [0, 1) (0.01 = one point).
        iterations: bisection steps on the budget.

    Returns:
        ``CalibrationResult`` with ``mode="max_accuracy_drop"``.
    """
    drop = check_accuracy_drop(max_accuracy_drop)
    correct = np.asarray(correct, dtype=bool)
    flops = np.asarray(flops_per_exit, dtype=np.float64).reshape(-1)
    target = float(correct[-1].mean()) - drop
    upper = flops[-1] if full_model_flops is None else max(flops[-1], float(full_model_flops))
    found = []

    def meets(budget):
        result = calibrate_thresholds(scores, correct, flops, budget, full_model_flops=full_model_flops)
        if result.validation_accuracy >= target - 1e-12:
            found.append(result)
            return True
        return False

    low, high = float(flops[0]), float(upper)
    if not meets(low):
        meets(high)  # always met: the last exit alone reaches the reference accuracy
        for _ in range(iterations):
            middle = (low + high) / 2.0
            if meets(middle):
                high = middle
            else:
                low = middle
    best = min(found, key=lambda r: (r.expected_flops, -r.validation_accuracy))
    return dataclasses.replace(best, mode="max_accuracy_drop", max_accuracy_drop=drop, target_accuracy=target)


def calibrate_patience(
    labels, correct, flops_per_exit, flops_budget=None, max_accuracy_drop=None, full_model_flops=None
):
    """The patience (exits in a row that agree) for a FLOPs budget or an
    accuracy target, by trying every p in [2, K] on validation.

    Args:
        labels: ``(K, N)`` predicted labels of every exit.
        correct: ``(K, N)`` bool.
        flops_per_exit: K cumulative FLOPs per sample.
        flops_budget: absolute FLOPs per sample: the most accurate p within
            it (ties: fewer FLOPs).
        max_accuracy_drop: the fewest-FLOPs p whose accuracy is at least the
            last exit's minus the drop. Exactly one of the two.
        full_model_flops: "100%", for ``expected_fraction``.

    Returns:
        ``CalibrationResult`` with ``patience`` set and no thresholds (None).

    Raises:
        ValueError: when no p fits the budget (naming the cheapest).
    """
    labels = np.asarray(labels)
    correct = np.asarray(correct, dtype=bool)
    flops = np.asarray(flops_per_exit, dtype=np.float64).reshape(-1)
    num_exits, num_samples = labels.shape
    if (flops_budget is None) == (max_accuracy_drop is None):
        raise ValueError("Give exactly one of `flops_budget` and `max_accuracy_drop`.")
    if num_exits < 2:
        raise ValueError("`criterion='patience'` needs at least 2 exits.")
    options = []
    for p in range(2, num_exits + 1):
        exits = rule.patience_exits(labels, p)
        options.append((p, exit_accuracy(exits, correct), expected_flops(exits, flops), exits))
    if flops_budget is not None:
        budget = float(flops_budget)
        feasible = [o for o in options if o[2] <= budget * (1 + BUDGET_RTOL)]
        if not feasible:
            cheapest = min(options, key=lambda o: o[2])
            raise ValueError(
                f"`flops_budget` ({budget:.6g} FLOPs per sample) is below the cheapest patience: p={cheapest[0]} "
                f"spends {cheapest[2]:.6g} on these validation samples."
            )
        p, accuracy, mean_flops, exits = max(feasible, key=lambda o: (o[1], -o[2]))
        extra = {}
    else:
        drop = check_accuracy_drop(max_accuracy_drop)
        target = float(correct[-1].mean()) - drop
        feasible = [o for o in options if o[1] >= target - 1e-12]  # p = K always is
        p, accuracy, mean_flops, exits = min(feasible, key=lambda o: (o[2], -o[1]))
        budget = mean_flops
        extra = {"mode": "max_accuracy_drop", "max_accuracy_drop": drop, "target_accuracy": target}
    return CalibrationResult(
        thresholds=None,
        expected_flops=mean_flops,
        expected_fraction=None if full_model_flops is None else mean_flops / float(full_model_flops),
        validation_accuracy=accuracy,
        exit_fractions=exit_fractions(exits, num_exits),
        budget=budget,
        full_model_flops=None if full_model_flops is None else float(full_model_flops),
        num_samples=num_samples,
        patience=p,
        **extra,
    )
