"""The budget rows of a run record, calibrated by ``keras_dmpo.policy``.

Each budget of ``BUDGETS`` (fractions of the full model's FLOPs) gets its
thresholds on the validation outputs, all budgets of a run together, smallest
first; test accuracy and FLOPs are read on the test outputs. A budget the
library finds unreachable (``policy.reachable``: below the first exit's cost)
is recorded with the reason instead. Training runs and ``--recalibrate`` both
come here, so a re-calibrated record has the rows a fresh run would write.
"""

from dmpo_bench.profiles import BUDGETS, CRITERION
from keras_dmpo import policy


def calibrated_budgets(
    val_probabilities, val_labels, test_probabilities, test_labels, flops_per_exit, full_model_flops, exits
):
    """``(budget rows, single-exit rows)`` of a run from its outputs.

    Args:
        val_probabilities, test_probabilities: ``(K, N, C)`` per-exit outputs.
        val_labels, test_labels: ``(N,)`` integer labels.
        flops_per_exit: K cumulative FLOPs per image.
        full_model_flops: what 100% means (the backbone with the last head).
        exits: the K exit blocks (named in the rows and in the reasons).
    """
    curve = policy.curve(
        val_probabilities,
        val_labels,
        test_probabilities,
        test_labels,
        flops_per_exit,
        full_model_flops,
        exits,
        budgets=BUDGETS,
        criterion=CRITERION,
    )
    return budget_rows(curve, flops_per_exit, full_model_flops, exits), curve.single_exits


def budget_rows(curve, flops_per_exit, full_model_flops, exits):
    """One row per budget of ``BUDGETS``: the curve's row, or why the budget
    cannot be reached."""
    rows_by_budget = {round(row["budget"], 6): row for row in curve.rows}
    rows = []
    for budget in BUDGETS:
        if not policy.reachable(budget, flops_per_exit, full_model_flops):
            first = flops_per_exit[0] / full_model_flops
            rows.append(
                {
                    "budget": budget,
                    "reachable": False,
                    "reason": f"below the cost of the first exit (block {exits[0]}: {first:.1%} of the full "
                    f"model's FLOPs)",
                }
            )
            continue
        row = rows_by_budget.get(round(budget, 6))
        if row is None:
            raise RuntimeError(f"budget {budget} is reachable but the curve has no row for it")
        rows.append({"reachable": True, **row})
    return rows


def budget_row(record, budget):
    """The row of ``budget`` in a record's ``budgets`` (None if absent)."""
    for row in record["budgets"]:
        if abs(row["budget"] - budget) < 1e-9:
            return row
    return None
