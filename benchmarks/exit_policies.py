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
from dmpo_bench.outputs import outputs_path, read_outputs

from keras_dmpo import policy as exit_policy
from keras_dmpo.atomic_io import write_bytes_atomic
from keras_dmpo.policy.record import exit_accuracy, expected_flops

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
    val, val_labels, test, test_labels = read_outputs(outputs_path(json_path))
    return record, val, val_labels, test, test_labels


def calibrated_policies(name, val, val_labels, flops, full):
    """``name`` calibrated on validation for every target: the budgets
    (fractions, together, as a benchmark run does) then the accuracy drops.
    "temperature" is confidence after one temperature per exit, fitted on the
    same validation outputs. Returns one ``ExitPolicy`` per target, None where
    it cannot be met (a budget below the policy's cheapest point)."""
    criterion = "confidence" if name == "temperature" else name
    temperatures = exit_policy.fit_temperatures(val, val_labels) if name == "temperature" else None
    targets = [{"flops_budget": b} for b in BUDGETS] + [{"max_accuracy_drop": d} for d in DROPS]
    return exit_policy.calibrate_many(
        val, val_labels, flops, full, targets, criterion, temperatures, skip_unreachable=True
    )


def evaluate_run(json_path):
    record, val, val_labels, test, test_labels = load_run(json_path)
    flops = [float(f) for f in record["flops"]["flops_per_exit"]]
    full = float(record["flops"]["full_model_flops"])
    test_correct = test.argmax(-1) == test_labels[None]
    reference = float(test_correct[-1].mean())
    targets = [("budget", b) for b in BUDGETS] + [("drop", d) for d in DROPS]
    rows = []
    for name in POLICIES:
        for (kind, target), found in zip(targets, calibrated_policies(name, val, val_labels, flops, full)):
            if found is None:
                rows.append({"policy": name, "target": kind, "value": target, "reachable": False})
                continue
            index = found.assign(test)
            accuracy = exit_accuracy(index, test_correct)
            rows.append(
                {
                    "policy": name,
                    "target": kind,
                    "value": target,
                    "reachable": True,
                    "test_accuracy": accuracy,
                    "test_fraction": expected_flops(index, flops) / full,
                    "validation_accuracy": found.calibration.validation_accuracy,
                    "validation_fraction": found.calibration.expected_flops / full,
                    "drop_vs_last_exit_on_test": reference - accuracy,
                    "patience": found.patience,
                }
            )
    temperatures = exit_policy.fit_temperatures(val, val_labels)
    ece = {
        "before": [exit_policy.expected_calibration_error(p, test_labels) for p in test],
        "after": [
            exit_policy.expected_calibration_error(exit_policy.rule.temper(p, t), test_labels)
            for p, t in zip(test, temperatures)
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
        if os.path.exists(outputs_path(p))
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
    result = {"command": command, "summary": summary, "runs": runs}
    write_bytes_atomic(OUT_JSON, json.dumps(result, indent=1).encode("utf-8"))
    if not args.no_docs:
        plot(summary, PLOT)
        with open(DOC) as handle:
            doc = handle.read()
        if BEGIN in doc:
            doc = doc[: doc.index(BEGIN)] + text + doc[doc.index(END) + len(END) :]
        else:
            doc = doc.rstrip() + "\n\n## Which exit policy wins (DINOv2-S benchmark runs)\n\n" + text + "\n"
        write_bytes_atomic(DOC, doc.encode("utf-8"))


if __name__ == "__main__":
    main()
