"""Which exit policy wins? Re-reads the DINOv2-S benchmark's stored outputs.

Every run of ``benchmarks/dmpo_benchmark.py`` keeps its per-exit validation
and test log-probabilities (``<method>_seed<k>.npz`` beside the JSON), so the
policies are compared without retraining: thresholds (or the patience) are
calibrated on validation, accuracy and FLOPs are read on test.

Policies: max-softmax confidence, normalised entropy, temperature-scaled
confidence (one temperature per exit, fitted on validation by likelihood),
and patience (PABEE: p exits in a row agree). Targets: FLOPs budgets of
25/30/50% and accuracy drops of 0.5/1/2 points below the last exit's
validation accuracy.

    .venv/bin/python benchmarks/exit_policies.py            # all dmpo runs found
    .venv/bin/python benchmarks/exit_policies.py --method plain

Writes ``benchmarks/results/exit_policies.json``, a table (stdout and
``docs/early_exit.md`` between markers) and ``docs/exit_policies.png``.
"""

import argparse
import glob
import json
import os
import sys
import time

import numpy as np

from keras_dmpo.policy import ExitPolicy, temperature
from keras_dmpo.policy import rule as exit_rule
from keras_dmpo.policy import search as calib

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from dmpo_benchmark import read_outputs  # noqa: E402  (the inverse of the benchmark's writer)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "benchmarks", "results", "dmpo_dinov2")
OUT_JSON = os.path.join(ROOT, "benchmarks", "results", "exit_policies.json")
DOC = os.path.join(ROOT, "docs", "early_exit.md")
PLOT = os.path.join(ROOT, "docs", "exit_policies.png")
BEGIN, END = "<!-- exit-policies:begin -->", "<!-- exit-policies:end -->"
POLICIES = ("confidence", "entropy", "temperature", "patience")
BUDGETS = (0.25, 0.3, 0.5)
DROPS = (0.005, 0.01, 0.02)


def load_run(json_path):
    with open(json_path) as handle:
        record = json.load(handle)
    val, val_labels, test, test_labels = read_outputs(json_path[: -len(".json")] + ".npz")
    flops = np.asarray(record["flops"]["flops_per_exit"], "float64")
    return record, val, val_labels, test, test_labels, flops


def _threshold_scores(name, val, val_labels, flops):
    """The exit scores of a threshold policy on validation, and its policy
    settings (criterion, temperatures)."""
    temperatures = temperature.fit_temperatures(val, val_labels) if name == "temperature" else None
    criterion = "entropy" if name == "entropy" else "confidence"
    scoring = ExitPolicy(criterion, thresholds=[0.0] * len(flops), temperatures=temperatures)
    scores = np.stack([scoring.scores(k, val[k]) for k in range(len(flops))])
    return criterion, temperatures, scores


def policies_for(name, val, val_labels, flops, full, budgets=(), drop=None):
    """Calibrate ``name`` on validation for each FLOPs budget (fractions,
    calibrated together as ``EarlyExitModel.curve`` does) or for an accuracy
    ``drop``. Returns one ``(ExitPolicy, CalibrationResult)`` per target, or
    None where it cannot be met (a budget below the policy's cheapest point)."""
    correct = val.argmax(-1) == val_labels[None]
    targets = [{"flops_budget": b * full} for b in budgets] if drop is None else [{"max_accuracy_drop": drop}]
    if name == "patience":
        found = []
        for target in targets:
            try:
                result = calib.calibrate_patience(
                    val.argmax(-1), correct, flops, full_model_flops=full, **target
                )
            except ValueError:
                found.append(None)
                continue
            policy = ExitPolicy("patience", patience=result.patience, num_exits=len(flops))
            found.append((policy, result))
        return found
    criterion, temperatures, scores = _threshold_scores(name, val, val_labels, flops)
    if drop is None:
        results = calib.calibrate_budgets(
            scores, correct, flops, [t["flops_budget"] for t in targets], full_model_flops=full
        )
    else:
        results = [calib.calibrate_for_accuracy(scores, correct, flops, drop, full_model_flops=full)]
    return [
        None
        if result is None
        else (
            ExitPolicy(criterion, thresholds=result.thresholds, temperatures=temperatures),
            result,
        )
        for result in results
    ]


def evaluate_run(json_path):
    record, val, val_labels, test, test_labels, flops = load_run(json_path)
    full = float(record["flops"]["full_model_flops"])
    test_correct = test.argmax(-1) == test_labels[None]
    reference = float(test_correct[-1].mean())
    rows = []
    for name in POLICIES:
        calibrated = policies_for(name, val, val_labels, flops, full, budgets=BUDGETS)
        calibrated = [("budget", b, f) for b, f in zip(BUDGETS, calibrated)]
        for drop in DROPS:
            calibrated.append(("drop", drop, policies_for(name, val, val_labels, flops, full, drop=drop)[0]))
        for kind, target, found in calibrated:
            if found is None:
                rows.append({"policy": name, "target": kind, "value": target, "reachable": False})
                continue
            policy, result = found
            index = policy.assign(test)
            rows.append(
                {
                    "policy": name,
                    "target": kind,
                    "value": target,
                    "reachable": True,
                    "test_accuracy": calib.exit_accuracy(index, test_correct),
                    "test_fraction": calib.expected_flops(index, flops) / full,
                    "validation_accuracy": result.validation_accuracy,
                    "validation_fraction": result.expected_flops / full,
                    "drop_vs_last_exit_on_test": reference - calib.exit_accuracy(index, test_correct),
                    "patience": policy.patience,
                }
            )
    temperatures = temperature.fit_temperatures(val, val_labels)
    ece = {
        "before": [temperature.expected_calibration_error(test[k], test_labels) for k in range(len(flops))],
        "after": [
            temperature.expected_calibration_error(exit_rule.temper(test[k], t), test_labels)
            for k, t in enumerate(temperatures)
        ],
        "temperatures": temperatures,
    }
    return {
        "run": os.path.relpath(json_path, ROOT),
        "dataset": record["dataset"],
        "method": record["method"],
        "seed": record["seed"],
        "last_exit_test_accuracy": reference,
        "rows": rows,
        "ece": ece,
    }


def summarise(runs):
    """Mean over seeds per (dataset, policy, target)."""
    table = {}
    for run in runs:
        for row in run["rows"]:
            key = (run["dataset"], row["policy"], row["target"], row["value"])
            table.setdefault(key, []).append(row)
    summary = []
    for (dataset, policy, kind, value), rows in sorted(table.items()):
        reachable = [r for r in rows if r["reachable"]]
        entry = {"dataset": dataset, "policy": policy, "target": kind, "value": value, "runs": len(rows)}
        if len(reachable) == len(rows):
            for field in ("test_accuracy", "test_fraction", "drop_vs_last_exit_on_test"):
                values = np.array([r[field] for r in reachable])
                entry[field] = float(values.mean())
                entry[field + "_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
        summary.append(entry)
    return summary


def markdown(summary, runs, command):
    lines = [
        BEGIN,
        f"Generated by `{command}` from {len(runs)} stored run(s) "
        f"({', '.join(sorted({r['run'] for r in runs}))}); {time.strftime('%Y-%m-%d')}. "
        "Cells: test accuracy % (test FLOPs %), mean over seeds; for the drop targets, then the test "
        "accuracy minus the last exit's on test (points; the target allows down to minus the drop); "
        "'—' = the target cannot be met (a budget below the policy's cheapest point).",
        "",
    ]
    for dataset in sorted({s["dataset"] for s in summary}):
        header = ["policy"] + [f"budget {v:.0%}" for v in BUDGETS] + [f"drop ≤ {100 * v:g} pt" for v in DROPS]
        lines += [f"**{dataset}**", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for policy in POLICIES:
            cells = [policy]
            for kind, values in (("budget", BUDGETS), ("drop", DROPS)):
                for value in values:
                    entry = next(
                        s
                        for s in summary
                        if (s["dataset"], s["policy"], s["target"], s["value"])
                        == (dataset, policy, kind, value)
                    )
                    if "test_accuracy" not in entry:
                        cells.append("—")
                    else:
                        cell = f"{100 * entry['test_accuracy']:.2f} ({100 * entry['test_fraction']:.1f})"
                        if kind == "drop":  # where test lands against the last exit on test
                            cell += f" {-100 * entry['drop_vs_last_exit_on_test']:+.2f}"
                        cells.append(cell)
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    lines.append(
        "Expected calibration error of each exit's confidence on test, before → after temperature scaling:"
    )
    lines.append("")
    for run in runs:
        ece = run["ece"]
        pairs = ", ".join(f"{100 * b:.1f}→{100 * a:.1f}" for b, a in zip(ece["before"], ece["after"]))
        temps = ", ".join(f"{t:.2f}" for t in ece["temperatures"])
        lines.append(f"- {run['dataset']} seed {run['seed']}: ECE % {pairs}; T = {temps}")
    lines += ["", END]
    return "\n".join(lines)


def plot(summary, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = sorted({s["dataset"] for s in summary})
    fig, axes = plt.subplots(1, len(datasets), figsize=(6 * len(datasets), 4), dpi=120, squeeze=False)
    for ax, dataset in zip(axes[0], datasets):
        for policy in POLICIES:
            points = sorted(
                (s["test_fraction"], s["test_accuracy"])
                for s in summary
                if s["dataset"] == dataset and s["policy"] == policy and "test_accuracy" in s
            )
            if points:
                x, y = zip(*points)
                ax.plot(np.array(x) * 100, np.array(y) * 100, "o-", label=policy)
        ax.set_xlabel("test FLOPs (% of the full model)")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(f"Exit policies, DINOv2-S DMPO, {dataset}")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", default="dmpo", help="which benchmark method's runs (default dmpo)")
    parser.add_argument("--results-dir", default=RESULTS)
    parser.add_argument("--no-docs", action="store_true", help="print only; do not touch docs/")
    args = parser.parse_args(argv)
    paths = [
        p
        for p in sorted(glob.glob(os.path.join(args.results_dir, "*", f"{args.method}_seed*.json")))
        if os.path.exists(p[: -len(".json")] + ".npz")
    ]
    if not paths:
        sys.exit(f"no {args.method} runs with stored outputs (.npz) under {args.results_dir}")
    runs = [evaluate_run(p) for p in paths]
    summary = summarise(runs)
    command = "python benchmarks/exit_policies.py" + (
        "" if args.method == "dmpo" else f" --method {args.method}"
    )
    text = markdown(summary, runs, command)
    print(text)
    with open(OUT_JSON + ".partial", "w") as handle:
        json.dump({"command": command, "summary": summary, "runs": runs}, handle, indent=1)
    os.replace(OUT_JSON + ".partial", OUT_JSON)
    if not args.no_docs:
        plot(summary, PLOT)
        with open(DOC) as handle:
            doc = handle.read()
        if BEGIN in doc:
            doc = doc[: doc.index(BEGIN)] + text + doc[doc.index(END) + len(END) :]
        else:
            doc = doc.rstrip() + "\n\n## Which exit policy wins (DINOv2-S benchmark runs)\n\n" + text + "\n"
        with open(DOC, "w") as handle:
            handle.write(doc)


if __name__ == "__main__":
    main()
