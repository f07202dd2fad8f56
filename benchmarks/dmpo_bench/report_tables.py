"""The markdown tables and lines of the benchmark report, one function each.

Each takes the means of ``summary.aggregate`` (or the claim of
``summary.claim_check``) and returns a list of lines; ``report`` puts them
together. Numbers are formatted here only.
"""

import json
import os

from dmpo_bench.profiles import BUDGETS, FIRST_CALIBRATION
from dmpo_bench.summary import BUDGET_GAIN_POINTS, aggregate

VERDICTS = {None: "not evaluated (missing results)", True: "PASS", False: "FAIL"}


def fmt(mean_and_std, digits=2):
    """``mean ± std`` (``mean`` alone for one seed, ``—`` for none)."""
    mean, std = mean_and_std
    if mean is None:
        return "—"
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if std is not None else f"{mean:.{digits}f}"


def budget_header():
    return " | ".join(f"{int(100 * b)}%" for b in BUDGETS)


def consistency_notes(records):
    """Warnings for a table whose runs differ in backbone, backend, training
    setup or exits: its rows would not be comparable."""
    notes = []
    by_dataset = {}
    for r in records:
        by_dataset.setdefault(r["dataset"], []).append(r)
    setup_keys = ("train_images", "validation_images", "test_images", "data_seed", "epochs", "batch_size")
    for dataset, runs in sorted(by_dataset.items()):
        for key, get in (
            ("backbone", lambda r: r.get("backbone_sha256")),
            ("backend", lambda r: r["environment"]["backend"]),
            (
                "training setup",
                lambda r: json.dumps(
                    {k: r["config"].get(k) for k in setup_keys + ("optimizer",)}, sort_keys=True
                ),
            ),
        ):
            values = {get(r) for r in runs}
            if len(values) > 1:
                notes.append(
                    f"WARNING: {dataset} runs differ in {key} ({len(values)} variants); "
                    "the table mixes settings."
                )
        exits = {tuple(r["config"]["exits"]) for r in runs if r["method"] != "single_exit"}
        if len(exits) > 1:
            notes.append(f"WARNING: {dataset} multi-exit runs use different exits: {sorted(exits)}.")
    return notes


def accuracy_table(methods, order):
    """Test accuracy per budget (FLOPs spent in brackets) and training times."""
    lines = [
        "| method | seeds | "
        + budget_header()
        + " | train time (s) | ms / train image | CPU ms / train image |",
        "|---|---|" + "---|" * len(BUDGETS) + "---|---|---|",
    ]
    for method in order:
        s = methods[method]
        cells = []
        for budget in BUDGETS:
            b = s["budgets"][budget]
            if b["n"] == 0:
                cells.append("—")
                continue
            cell = f"{fmt(b['accuracy'])} ({b['fraction'][0]:.0f})"
            if b["n"] < s["runs"]:
                cell += f" [{b['n']}/{s['runs']} seeds]"
            cells.append(cell)
        lines.append(
            f"| {method} | {','.join(map(str, s['seeds']))} | "
            + " | ".join(cells)
            + f" | {fmt(s['train_seconds'], 0)} | {fmt(s['train_ms_per_image'], 2)} "
            + f"| {fmt(s['train_cpu_ms_per_image'], 1)} |"
        )
    reasons = sorted(
        {
            f"{method}: {reason}"
            for method, s in methods.items()
            for b in s["budgets"].values()
            for reason in b["unreachable_reasons"]
        }
    )
    if reasons:
        lines += ["", "Unreachable budgets: " + "; ".join(reasons) + "."]
    return lines


def each_exit_table(methods, order):
    """Each exit used alone, per method."""
    width = max(len(s["single_exits"]) for s in methods.values())
    lines = [
        "",
        "Each exit alone (test accuracy %, mean ± std; FLOPs % of the full model):",
        "",
        "| method | " + " | ".join(f"exit {i + 1}" for i in range(width)) + " |",
        "|---|" + "---|" * width,
    ]
    for method in order:
        exits = methods[method]["single_exits"]
        lines.append(
            f"| {method} | "
            + " | ".join(f"{fmt(e['accuracy'])} ({e['fraction']:.0f}; block {e['exit']})" for e in exits)
            + " |"
        )
    return lines


def probe_lines(path, blocks, data_seed=0):
    """The frozen-feature probe's test accuracy at ``blocks`` as a row of the
    each-exit table, and what it is; none without a probe file at ``path``, or
    when the probe was made on other splits than the runs' data seed."""
    if not path or not os.path.isfile(path):
        return []
    with open(path) as handle:
        probe = json.load(handle)
    if probe.get("data_seed", 0) != data_seed:
        return []
    accuracy = probe["block_accuracy"]
    cells = [f"{100 * accuracy[b - 1]:.2f} (block {b})" if b <= len(accuracy) else "—" for b in blocks]
    return [
        f"| frozen probe ({probe['train_images']} / {probe['test_images']} images) | "
        + " | ".join(cells)
        + " |",
        "",
        "frozen probe: a logistic regression on the frozen backbone's LayerNorm'd class and mean "
        "patch tokens after that block (`benchmarks/depth_probe.py`), fitted on the same training "
        "images, scored on the same test images (Fashion-MNIST: the same sizes, other images): what the "
        "tuned exits must beat.",
    ]


def calibration_comparison(runs, order):
    """Test accuracy per budget with the run-time calibration (each budget
    searched alone) next to the current one, for the runs that were
    recalibrated from that method."""
    first = [
        r
        for r in runs
        if "budgets_at_run_time" in r and r.get("calibration_at_run_time") == FIRST_CALIBRATION
    ]
    if not first:
        return []
    before = aggregate([{**r, "budgets": r["budgets_at_run_time"]} for r in first])
    after = aggregate(first)
    dataset = first[0]["dataset"]
    lines = [
        "",
        "Calibration at run time → now. At run time each budget was searched alone "
        "(`calibration.calibrate_thresholds`); now the budgets of a run are calibrated together, smallest "
        "first (`calibration.calibrate_budgets`), re-read from the stored outputs by `--recalibrate`. "
        "Test accuracy (%), mean over the same seeds, FLOPs spent in brackets; validation accuracy after the "
        "slash. The ladder never ends a larger budget lower on validation; "
        "test accuracy can still move either way.",
        "",
        "| method | seeds | " + budget_header() + " |",
        "|---|---|" + "---|" * len(BUDGETS),
    ]
    for method in [m for m in order if m in after[dataset]]:
        cells = []
        for budget in BUDGETS:
            b0, b1 = before[dataset][method]["budgets"][budget], after[dataset][method]["budgets"][budget]
            if b0["n"] == 0 or b1["n"] == 0:
                cells.append("—")
                continue
            cells.append(
                f"{b0['accuracy'][0]:.2f} ({b0['fraction'][0]:.0f}) / {b0['validation'][0]:.1f} → "
                f"{b1['accuracy'][0]:.2f} ({b1['fraction'][0]:.0f}) / {b1['validation'][0]:.1f}"
            )
        seeds = ",".join(map(str, after[dataset][method]["seeds"]))
        lines.append(f"| {method} | {seeds} | " + " | ".join(cells) + " |")
    return lines


def latency_table(methods, order):
    """Staged LiteRT batch-1 latency per budget, for the methods that timed it."""
    with_latency = [m for m in order if "latency" in methods[m]]
    if not with_latency:
        return []
    lines = [
        "",
        "Staged LiteRT batch-1 latency (ms / image, 1 thread; ratio to the monolithic TFLite "
        "model in brackets):",
        "",
        "| method | monolithic | " + budget_header() + " |",
        "|---|---|" + "---|" * len(BUDGETS),
    ]
    for method in with_latency:
        lat = methods[method]["latency"]
        cells = [
            f"{fmt(lat['budgets'][b]['staged_ms'], 3)} ({fmt(lat['budgets'][b]['ratio'], 2)})"
            if lat["budgets"][b]["staged_ms"][0] is not None
            else "—"
            for b in BUDGETS
        ]
        lines.append(f"| {method} | {fmt(lat['monolithic_ms'], 3)} | " + " | ".join(cells) + " |")
    return lines


def claim_lines(claim, quick):
    """The claim, regime and budget bars of one data set."""
    method = claim.get("method", "dmpo")
    named = "" if method == "dmpo" else f", DMPO = `{method}`"
    lines = [f"### Claim check ({claim['dataset']}{named}, means over seeds)", ""]
    lines.append(
        f"DMPO@30% = {fmt(claim['dmpo_30'])}, single_exit@100% = {fmt(claim['single_exit_100'])}, "
        f"plain@30% = {fmt(claim['plain_30'])} (accuracy %)."
    )
    lines.append("")
    for check in claim["checks"]:
        if check["passed"] is None:
            verdict = VERDICTS[None]
        else:
            verdict = (
                f"{'PASS' if check['passed'] else 'FAIL'}: DMPO@30% {claim['dmpo_30'][0]:.2f} vs target "
                f"{check['target']:.2f} (margin {check['gap']:+.2f} points)"
            )
        lines.append(f"- DMPO@30% {check['name']}: {verdict}")
    for row in claim["regime"]:
        detail = (
            "" if row["gap"] is None else f" (exit 1 alone {row['exit1'][0]:.2f}; margin {row['gap']:+.2f})"
        )
        lines.append(f"- regime: {row['name']}: {VERDICTS[row['passed']]}{detail}")
    budget = claim["budget"]
    detail = (
        ""
        if budget["passed"] is None
        else (
            f" (DMPO@25% {budget['accuracy_25'][0]:.2f} at {budget['fraction_25'][0]:.1f}% FLOPs, "
            f"DMPO@50% {budget['accuracy_50'][0]:.2f} at {budget['fraction_50'][0]:.1f}%; "
            f"margin {budget['gap']:+.2f})"
        )
    )
    lines.append(
        f"- the budget buys accuracy (DMPO@50% >= DMPO@25% + {BUDGET_GAIN_POINTS:g}, more FLOPs spent): "
        f"{VERDICTS[budget['passed']]}{detail}"
    )
    overall = {None: "not evaluated", True: "PASS", False: "FAIL"}[claim["passed"]]
    lines += [
        "",
        f"The claim (the two DMPO@30% checks): **{overall}**"
        + (" (smoke-test numbers, meaningless)" if quick else "")
        + ".",
        "",
    ]
    return lines
