"""``--recalibrate``: every stored run's budgets again, from its outputs.

No training and no model: a record holds the FLOPs of its exits
(``flops.flops_per_exit``, ``flops.full_model_flops``) and its exit blocks
(``config.exits``), and the .npz beside it the validation and test outputs;
``keras_dmpo.policy`` needs nothing else. The budgets found at run time are
kept once, as ``budgets_at_run_time`` with how they were found.
"""

import json
import os

from dmpo_bench.budgets import budget_row, calibrated_budgets
from dmpo_bench.outputs import outputs_path, read_outputs
from dmpo_bench.profiles import CALIBRATION, FIRST_CALIBRATION, REPO
from dmpo_bench.records import record_paths, write_record


def recalibrated(record, outputs):
    """``record`` with its budgets calibrated again from ``outputs``
    (``read_outputs``'s four arrays); the run-time budgets are kept the first
    time only."""
    record = dict(record)
    val_probs, val_labels, test_probs, test_labels = outputs
    flops = record["flops"]
    rows, _ = calibrated_budgets(
        val_probs,
        val_labels,
        test_probs,
        test_labels,
        flops["flops_per_exit"],
        flops["full_model_flops"],
        record["config"]["exits"],
    )
    record.setdefault("budgets_at_run_time", record["budgets"])
    record.setdefault("calibration_at_run_time", record.get("calibration", FIRST_CALIBRATION))
    record["budgets"] = rows
    record["calibration"] = CALIBRATION + ", from the stored float16 outputs (--recalibrate)"
    return record


def recalibrate(results_dir, log=print):
    """Re-calibrate every record under ``results_dir`` that has stored
    outputs, rewriting it in place. Returns how many were rewritten."""
    changed = 0
    for path in record_paths(results_dir):
        name = os.path.relpath(path, REPO)
        if not os.path.isfile(outputs_path(path)):
            log(f"    {name}: no stored outputs, left as it is")
            continue
        with open(path) as handle:
            record = recalibrated(json.load(handle), read_outputs(outputs_path(path)))
        write_record(path, record)
        changed += 1
        now = budget_row(record, 0.3)
        was = budget_row({"budgets": record["budgets_at_run_time"]}, 0.3)
        if now and now.get("reachable"):
            log(
                f"    {name}: @30% {100 * now['test_accuracy']:.2f}% "
                f"(at run time {100 * was['test_accuracy']:.2f}%)"
            )
    return changed
