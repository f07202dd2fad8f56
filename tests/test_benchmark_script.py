"""The DMPO benchmark's report, re-calibration and driver on hand-made records (no training)."""

import importlib.util
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCHMARKS = os.path.join(ROOT, "benchmarks")
# The scripts import their package as a sibling (Python puts a script's own
# folder first on sys.path); the tests import it the same way.
sys.path.insert(0, BENCHMARKS)

from dmpo_bench import budgets, data, estimate, outputs, profiles, recalibrate, report, report_tables, summary  # noqa: E402
from dmpo_bench.records import load_results, write_record  # noqa: E402

from keras_dmpo import policy  # noqa: E402

TOY, DINOV2 = profiles.TOY, profiles.DINOV2


def load_script(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(BENCHMARKS, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


FRACTIONS = [0.14, 0.27, 0.40, 0.53, 0.66, 0.79, 0.92, 1.05]


def _record(method, seed, accuracies, dataset="fashion_mnist", single=False):
    """A result file as run_one writes it; ``accuracies``: budget -> accuracy
    (fraction) or None for an unreachable budget."""
    budgets = []
    for budget in (0.25, 0.3, 0.5, 0.75, 1.0):
        acc = accuracies.get(budget)
        if acc is None:
            budgets.append(
                {"budget": budget, "reachable": False, "reason": "below the cost of the first exit"}
            )
        else:
            budgets.append(
                {
                    "budget": budget,
                    "reachable": True,
                    "thresholds": [0.9, 0.0],
                    "validation_accuracy": acc,
                    "validation_fraction": budget,
                    "test_accuracy": acc,
                    "test_fraction": budget * 0.98,
                    "exit_fractions": [0.5, 0.5],
                }
            )
    exits = [8] if single else list(range(1, 9))
    fractions = [1.0] if single else FRACTIONS
    return {
        "schema_version": 1,
        "dataset": dataset,
        "method": method,
        "seed": seed,
        "quick": False,
        "command": "python benchmarks/dmpo_benchmark.py --seeds 0,1",
        "backbone_source": "random test backbone",
        "backbone_sha256": "abc",
        "config": {
            "train_images": 100,
            "validation_images": 50,
            "test_images": 100,
            "data_seed": 0,
            "epochs": 1,
            "batch_size": 64,
            "optimizer": {"name": "AdamW", "learning_rate": 0.002, "weight_decay": 1e-4},
            "exits": exits,
        },
        "environment": {"backend": "jax"},
        "timing": {
            "train_seconds": 100.0 + 10 * seed,
            "train_ms_per_image": 5.0,
            "steady_train_ms_per_image": 4.0,
            "first_steps_seconds": 3.0,
            "eval_seconds": 15.0,
            "eval_images": 150,
            "total_seconds": 130.0,
        },
        "flops": {"flops_per_exit": fractions, "full_model_flops": 1.0, "fractions": fractions},
        "budgets": budgets,
        "single_exits": [{"exit": e, "fraction": f, "test_accuracy": 0.8} for e, f in zip(exits, fractions)],
        "latency": None,
    }


def _write(directory, record):
    path = os.path.join(directory, record["dataset"], f"{record['method']}_seed{record['seed']}.json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as handle:
        json.dump(record, handle)


def _results(tmp_path, dmpo30=(0.90, 0.92)):
    results = tmp_path / "results"
    for seed, acc in enumerate(dmpo30):
        _write(results, _record("dmpo", seed, {0.3: acc, 0.5: 0.93, 0.75: 0.94, 1.0: 0.94}))
    for seed, acc in enumerate((0.88, 0.88)):
        _write(results, _record("plain", seed, {0.3: acc, 0.5: 0.90, 0.75: 0.91, 1.0: 0.92}))
    for seed, acc in enumerate((0.91, 0.93)):
        _write(results, _record("single_exit", seed, {1.0: acc}, single=True))
    return str(results)


def test_mean_std():
    mean, std, n = summary.mean_std([1.0, 2.0, 3.0])
    assert (mean, n) == (2.0, 3) and std == pytest.approx(1.0)  # sample std (ddof=1)
    assert summary.mean_std([5.0]) == (5.0, None, 1)
    assert summary.mean_std([]) == (None, None, 0)


def test_aggregate_and_claim_pass(tmp_path):
    records = load_results(_results(tmp_path))
    assert len(records) == 6
    agg = summary.aggregate(records)
    dmpo = agg["fashion_mnist"]["dmpo"]
    mean, std = dmpo["budgets"][0.3]["accuracy"]
    assert mean == pytest.approx(91.0) and std == pytest.approx(math.sqrt(2.0))
    assert dmpo["budgets"][0.25]["n"] == 0
    assert dmpo["budgets"][0.25]["unreachable_reasons"] == ["below the cost of the first exit"]
    assert dmpo["train_seconds"][0] == pytest.approx(105.0)
    claim = summary.claim_check(agg)
    # DMPO@30 = 91.0; single@100 = 92.0 -> target 91.0 (gap 0); plain@30 = 88.0 -> target 90.0 (gap +1)
    assert claim["single_exit_100"][0] == pytest.approx(92.0)
    assert [c["passed"] for c in claim["checks"]] == [True, True]
    assert claim["checks"][0]["gap"] == pytest.approx(0.0, abs=1e-9)
    assert claim["checks"][1]["gap"] == pytest.approx(1.0)
    assert claim["passed"] is True


def test_claim_fail_and_missing(tmp_path):
    agg = summary.aggregate(load_results(_results(tmp_path, dmpo30=(0.89, 0.90))))
    claim = summary.claim_check(agg)  # DMPO@30 = 89.5: 0.5 below single-1, 0.5 below plain+2
    assert [c["passed"] for c in claim["checks"]] == [False, False]
    assert claim["passed"] is False
    del agg["fashion_mnist"]["plain"]
    claim = summary.claim_check(agg)
    assert claim["checks"][1]["passed"] is None and claim["passed"] is None


def test_an_adopted_variant_is_checked_on_its_own_numbers(tmp_path):
    results = _results(tmp_path, dmpo30=(0.89, 0.90))  # dmpo fails both checks
    for seed, acc in enumerate((0.91, 0.91)):
        variant = _record("dmpo_cov_all", seed, {0.25: 0.85, 0.3: acc, 0.5: 0.93, 1.0: 0.94})
        variant["single_exits"][0]["test_accuracy"] = 0.70
        _write(results, variant)
    agg = summary.aggregate(load_results(results))
    assert summary.claim_check(agg)["passed"] is False
    claim = summary.claim_check(agg, method="dmpo_cov_all")
    assert claim["method"] == "dmpo_cov_all" and claim["dmpo_30"][0] == pytest.approx(91.0)
    assert claim["passed"] is True
    assert claim["regime"][1]["exit1"][0] == pytest.approx(70.0)
    assert claim["budget"]["accuracy_25"][0] == pytest.approx(85.0)
    assert "DMPO = `dmpo_cov_all`" in report_tables.claim_lines(claim, quick=False)[0]


def test_regime_and_budget_checks(tmp_path):
    results = tmp_path / "results"
    for seed in (0, 1):
        dmpo = _record("dmpo", seed, {0.25: 0.90, 0.3: 0.91, 0.5: 0.89, 1.0: 0.94})
        dmpo["single_exits"][0]["test_accuracy"] = 0.925  # 1.5 below single: under the 2-point bar
        _write(results, dmpo)
        plain = _record("plain", seed, {0.3: 0.85})
        plain["single_exits"][0]["test_accuracy"] = 0.60
        _write(results, plain)
        _write(results, _record("single_exit", seed, {1.0: 0.94}, single=True))
    claim = summary.claim_check(summary.aggregate(load_results(str(results))))
    plain_row, dmpo_row = claim["regime"]
    assert plain_row["passed"] and plain_row["gap"] == pytest.approx(94 - 60 - 5)
    assert dmpo_row["passed"] is False and dmpo_row["gap"] == pytest.approx(94 - 92.5 - 2)
    # 50% is less accurate than 25% (89 < 90): the budget does not buy accuracy
    assert claim["budget"]["passed"] is False


@pytest.mark.parametrize("acc50, passed", [(0.905, False), (0.912, True), (0.91, True)])
def test_budget_bar_needs_one_point(tmp_path, acc50, passed):
    results = tmp_path / "results"
    _write(results, _record("dmpo", 0, {0.25: 0.90, 0.3: 0.90, 0.5: acc50}))
    claim = summary.claim_check(summary.aggregate(load_results(str(results))))
    assert claim["budget"]["passed"] is passed
    assert claim["budget"]["gap"] == pytest.approx(100 * acc50 - 90 - 1)


def test_photo_sets_lead_the_report_with_the_probe(tmp_path):
    results = _results(tmp_path)
    for method in ("dmpo", "plain"):
        record = _record(method, 0, {0.3: 0.7}, dataset="cifar10")
        record["config"]["data_source"] = "image files at /x (test)"
        _write(results, record)
    probe_dir = tmp_path / "depth_probe"
    probe_dir.mkdir()
    probe = {"block_accuracy": [0.1 * (i % 10) for i in range(12)], "train_images": 100, "test_images": 200}
    (probe_dir / DINOV2.probe_files["cifar10"]).write_text(json.dumps(probe))
    # The toy profile's report has no probe of its own backbone: no row.
    text, _, _ = report.build_report(
        results, str(tmp_path / "out"), TOY, plot=False, probe_dir=str(probe_dir)
    )
    assert "| frozen probe" not in text
    text, _, _ = report.build_report(
        results, str(tmp_path / "out"), DINOV2, plot=False, probe_dir=str(probe_dir)
    )
    assert text.index("### CIFAR-10 photographs") < text.index("### Fashion-MNIST")
    assert "Data: image files at /x (test)." in text
    row = next(line for line in text.splitlines() if line.startswith("| frozen probe"))
    # exits 1..8 of the synthetic records: block b's probe accuracy is 10 * (b - 1) % 100
    assert row.startswith("| frozen probe (100 / 200 images) | 0.00 (block 1) | 10.00 (block 2) |")
    assert row.rstrip().endswith("70.00 (block 8) |")


def test_photo_source_says_where_to_get_the_data(tmp_path):
    with pytest.raises(SystemExit, match=r"clothing: .*clothing-small.tar not found; pass --data-root DIR"):
        data.photo_source("clothing", str(tmp_path))
    (tmp_path / "cifar10-jpeg.tar.gz").write_bytes(b"x")
    assert data.photo_source("cifar10", str(tmp_path)) == str(tmp_path / "cifar10-jpeg.tar.gz")


def test_build_report_keeps_hand_written_notes(tmp_path):
    results = _results(tmp_path)
    out = tmp_path / "docs"
    out.mkdir()
    (out / "benchmarks.md").write_text("# Notes\n\nhand-written attempts\n")
    text, path, claim = report.build_report(results, str(out), TOY, command="cmd --report", plot=False)
    assert "| dmpo | 0,1 | — | 91.00 ± 1.41 (29)" in text
    assert "PASS: DMPO@30% 91.00 vs target 91.00" in text
    assert "The claim (the two DMPO@30% checks): **PASS**" in text
    assert (
        "regime: single_exit@100% - plain exit 1 alone >= 5: PASS (exit 1 alone 80.00; margin +7.00)" in text
    )
    assert "the budget buys accuracy (DMPO@50% >= DMPO@25% + 1, more FLOPs spent): not evaluated" in text
    body = open(path).read()
    assert body.startswith("# Notes\n\nhand-written attempts\n")
    # A second build replaces the generated block only.
    report.build_report(results, str(out), TOY, command="cmd --report", plot=False)
    body2 = open(path).read()
    assert body2.count(TOY.generated_begin) == 1 and "hand-written attempts" in body2


def test_report_plot_and_mixed_settings_warning(tmp_path):
    results = _results(tmp_path)
    odd = _record("plain", 2, {0.3: 0.5})
    odd["config"]["epochs"] = 9
    _write(results, odd)
    text, _, _ = report.build_report(results, str(tmp_path / "out"), TOY, quick=True)
    assert "WARNING: fashion_mnist runs differ in training setup" in text
    assert "SMOKE TEST" in text
    assert (tmp_path / "out" / "benchmarks_fmnist_quick.png").stat().st_size > 1000


def test_write_record_and_estimate(tmp_path):
    path = str(tmp_path / "a" / "b.json")
    write_record(path, {"x": 1})
    assert json.load(open(path)) == {"x": 1}
    assert os.listdir(tmp_path / "a") == ["b.json"]  # no temporary left behind
    records = load_results(_results(tmp_path))
    total, detail = estimate.estimate_full_run(records, TOY)
    assert set(detail) == {"fashion_mnist", "digits"} and total == pytest.approx(sum(detail.values()))
    # fashion_mnist, 7 methods x 3 seeds, each: 4 ms per training image x
    # images x epochs + 0.1 s per evaluated image + 3 s first steps + 15 s
    train_images = TOY.train_images["fashion_mnist"] * TOY.data["fashion_mnist"]["full"]["epochs"]
    eval_images = TOY.eval_images["fashion_mnist"]
    runs = 3 * len(TOY.methods["fashion_mnist"])
    assert detail["fashion_mnist"] == pytest.approx(
        runs * (0.004 * train_images + 0.1 * eval_images + 3 + 15)
    )


def test_idle_estimate_uses_cpu_time(tmp_path):
    records = load_results(_results(tmp_path))
    wall, _ = estimate.estimate_full_run(records, TOY)
    # without CPU times the idle estimate falls back to the wall times
    assert estimate.estimate_full_run(records, TOY, idle_cores=2)[0] == pytest.approx(wall)
    for r in records:  # 2 CPU-ms per image on 2 cores = 1 ms wall: a quarter of the 4 ms measured
        r["timing"]["steady_train_cpu_ms_per_image"] = 2.0
    idle, detail = estimate.estimate_full_run(records, TOY, idle_cores=2)
    train_images = TOY.train_images["fashion_mnist"] * TOY.data["fashion_mnist"]["full"]["epochs"]
    eval_images = TOY.eval_images["fashion_mnist"]
    # training and evaluation scale by 1/4, the first steps too; the 15 s do not
    runs = 3 * len(TOY.methods["fashion_mnist"])
    assert detail["fashion_mnist"] == pytest.approx(
        runs * (0.001 * train_images + 0.025 * eval_images + 0.75 + 15)
    )


def test_report_compares_run_time_and_current_calibration(tmp_path):
    results = tmp_path / "results"
    for seed, (was, now) in enumerate(((0.89, 0.91), (0.87, 0.90))):
        dmpo = _record("dmpo", seed, {0.3: 0.90, 0.5: now})
        dmpo["budgets_at_run_time"] = _record("dmpo", seed, {0.3: 0.90, 0.5: was})["budgets"]
        dmpo["calibration_at_run_time"] = profiles.FIRST_CALIBRATION
        dmpo["calibration"] = profiles.CALIBRATION
        _write(results, dmpo)
    _write(results, _record("plain", 0, {0.3: 0.85}))  # calibrated once: not in the comparison
    text, _, _ = report.build_report(str(results), str(tmp_path / "out"), TOY, plot=False)
    comparison = text[text.index("Calibration at run time") :]
    row = next(line for line in comparison.splitlines() if line.startswith("| dmpo |"))
    # 50%: run time (89 + 87) / 2 = 88.00, now (91 + 90) / 2 = 90.50; FLOPs 49.
    assert row.split(" | ")[4] == "88.00 (49) / 88.0 → 90.50 (49) / 90.5"
    assert "| plain |" not in comparison.split("\n\n")[2]


def test_report_checks_the_bars_per_data_set(tmp_path):
    results = _results(tmp_path)
    _write(results, _record("dmpo", 0, {0.25: 0.97, 0.3: 0.98, 0.5: 0.98}, dataset="digits"))
    _write(results, _record("single_exit", 0, {1.0: 0.97}, dataset="digits", single=True))
    text, _, claim = report.build_report(results, str(tmp_path / "out"), TOY, plot=False)
    assert claim["dataset"] == "fashion_mnist"
    digits = text[text.index("### Claim check (digits, means over seeds)") :]
    assert "PASS: DMPO@30% 98.00 vs target 96.00 (margin +2.00 points)" in digits
    assert "vs plain@30% + 2: not evaluated (missing results)" in digits
    assert text.index("### Claim check (fashion_mnist") < text.index("### Claim check (digits")


def test_stored_outputs_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 20, 4)) * 5
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    labels = rng.integers(0, 4, 20)
    path = str(tmp_path / "run.npz")
    outputs.write_outputs(
        path,
        {
            "val_log_probabilities": probs,
            "val_labels": labels,
            "test_log_probabilities": probs[:, :10],
            "test_labels": labels[:10],
        },
    )
    val, val_labels, test, test_labels = outputs.read_outputs(path)
    np.testing.assert_allclose(val, probs, atol=2e-3)  # float16 log-probabilities
    np.testing.assert_allclose(val.sum(-1), 1.0)
    np.testing.assert_array_equal(val.argmax(-1), probs.argmax(-1))
    np.testing.assert_array_equal(val_labels, labels)
    assert test.shape == (3, 10, 4) and test_labels.tolist() == labels[:10].tolist()


# --- budgets and re-calibration from stored outputs (keras_dmpo.policy only) --


def _stored_run(directory, flops_per_exit, seed=0, dataset="cifar10", method="dmpo"):
    """A record and its .npz as a run leaves them, from random outputs of
    len(flops_per_exit) exits whose later exits are more often right."""
    rng = np.random.default_rng(seed)
    num_exits, classes = len(flops_per_exit), 4

    def split(n):
        labels = rng.integers(0, classes, n)
        logits = rng.normal(size=(num_exits, n, classes))
        for k in range(num_exits):
            logits[k, np.arange(n), labels] += 0.8 * (k + 1)
        probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
        return probs, labels

    (val, val_labels), (test, test_labels) = split(200), split(300)
    exits = [2 * (k + 1) for k in range(num_exits)]
    full = float(flops_per_exit[-1])
    rows, single = budgets.calibrated_budgets(val, val_labels, test, test_labels, flops_per_exit, full, exits)
    record = {
        "dataset": dataset,
        "method": method,
        "seed": seed,
        "config": {"exits": exits},
        "flops": {"flops_per_exit": list(flops_per_exit), "full_model_flops": full},
        "budgets": rows,
        "calibration": profiles.CALIBRATION,
        "single_exits": single,
    }
    path = os.path.join(directory, dataset, f"{method}_seed{seed}.json")
    stored = {
        "val_log_probabilities": val,
        "val_labels": val_labels,
        "test_log_probabilities": test,
        "test_labels": test_labels,
    }
    outputs.write_outputs(outputs.outputs_path(path), stored)
    write_record(path, record)
    return path, record


def test_budget_rows_leave_the_unreachable_rule_to_the_library(tmp_path):
    flops = [1.2e6, 2e6, 3e6, 4e6]  # the first exit costs 30%: 25% cannot be reached
    _, record = _stored_run(str(tmp_path), flops)
    by_budget = {row["budget"]: row for row in record["budgets"]}
    assert list(by_budget) == list(profiles.BUDGETS)
    for budget, row in by_budget.items():
        assert row["reachable"] is policy.reachable(budget, flops, flops[-1])
    assert by_budget[0.25]["reason"] == (
        "below the cost of the first exit (block 2: 30.0% of the full model's FLOPs)"
    )
    reached = [by_budget[b] for b in profiles.BUDGETS[1:]]
    # A reachable row is the library's curve row: thresholds and the policy.
    assert all(row["policy"]["criterion"] == profiles.CRITERION for row in reached)
    assert all(row["validation_fraction"] <= row["budget"] + 1e-9 for row in reached)
    # Budgets calibrated together: validation accuracy never falls as the budget grows.
    accuracies = [row["validation_accuracy"] for row in reached]
    assert accuracies == sorted(accuracies)


def test_recalibrate_reads_records_and_outputs_without_keras(tmp_path):
    results = str(tmp_path / "results")
    path, at_run_time = _stored_run(results, [1e6, 2e6, 3e6, 4e6])
    no_outputs = os.path.join(results, "cifar10", "plain_seed0.json")
    write_record(no_outputs, {**at_run_time, "method": "plain"})  # left as it is: nothing to re-read
    code = (
        "import json, sys; sys.path.insert(0, sys.argv[1]); "
        "from dmpo_bench.recalibrate import recalibrate; "
        "changed = recalibrate(sys.argv[2], log=lambda line: None); "
        "loaded = [m for m in ('keras', 'tensorflow', 'jax', 'torch') if m in sys.modules]; "
        "print(json.dumps([changed, loaded]))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, BENCHMARKS, results], capture_output=True, text=True, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == [1, []]
    with open(path) as handle:
        record = json.load(handle)
    assert record["budgets_at_run_time"] == at_run_time["budgets"]
    assert record["calibration_at_run_time"] == profiles.CALIBRATION
    assert record["calibration"] == profiles.CALIBRATION + ", from the stored float16 outputs (--recalibrate)"
    # The same rows a run would write from the float16 outputs.
    expected, _ = budgets.calibrated_budgets(
        *outputs.read_outputs(outputs.outputs_path(path)), [1e6, 2e6, 3e6, 4e6], 4e6, [2, 4, 6, 8]
    )
    assert record["budgets"] == json.loads(json.dumps(expected))
    with open(no_outputs) as handle:
        assert "budgets_at_run_time" not in json.load(handle)
    # A second pass keeps the run-time budgets of the first.
    again = recalibrate.recalibrated(record, outputs.read_outputs(outputs.outputs_path(path)))
    assert again["budgets_at_run_time"] == at_run_time["budgets"]
    assert again["calibration_at_run_time"] == profiles.CALIBRATION


# --- the driver and the profiles ------------------------------------------


def test_the_profiles_markers_are_the_docs(tmp_path):
    with open(os.path.join(ROOT, "docs", "benchmarks.md")) as handle:
        doc = handle.read()
    for profile in (TOY, DINOV2):
        assert doc.count(profile.generated_begin) == 1 and doc.count(profile.generated_end) == 1
    assert DINOV2.results_dir() == os.path.join(ROOT, "benchmarks", "results", "dmpo_dinov2")
    assert TOY.results_dir(quick=True) == os.path.join(ROOT, "benchmarks", "results", "dmpo_quick")
    assert profiles.PROFILES[profiles.DEFAULT_PROFILE] is DINOV2


def test_the_runner_command_lines_parse():
    bench = load_script("dmpo_benchmark")
    # benchmarks/run_photo_benchmark.sh and docs/benchmarks.md
    args = bench.parse_args(
        ["--profile", "dinov2", "--datasets", "cifar10", "--methods", "dmpo", "--seeds", "0"]
    )
    assert (args.profile, args.datasets, args.methods, args.seeds) == ("dinov2", "cifar10", "dmpo", "0")
    args = bench.parse_args(["--data-root", "/data", "--quick", "--report", "--recalibrate"])
    assert (args.data_root, args.quick, args.report, args.recalibrate) == ("/data", True, True, True)
    assert bench.parse_args([]).profile == "dinov2"


def test_methods_per_data_set():
    bench = load_script("dmpo_benchmark")
    assert bench.methods_for("clothing", DINOV2, None, quick=False) == ["single_exit", "dmpo", "plain"]
    assert bench.methods_for("cifar10", DINOV2, None, quick=True) == ["single_exit", "dmpo", "plain"]
    # Candidates run only when asked for by name.
    assert "dmpo_distill" not in bench.methods_for("fashion_mnist", DINOV2, None, quick=False)
    assert bench.methods_for("fashion_mnist", DINOV2, ["dmpo", "dmpo_distill"], quick=False) == [
        "dmpo",
        "dmpo_distill",
    ]


def test_report_through_the_driver(tmp_path, capsys):
    bench = load_script("dmpo_benchmark")
    results = _results(tmp_path)
    out = tmp_path / "docs"
    argv = ["--profile", "toy", "--report", "--results-dir", results, "--report-dir", str(out)]
    assert bench.main(argv) == 0
    printed = capsys.readouterr().out
    assert "The claim (the two DMPO@30% checks): **PASS**" in printed
    body = (out / "benchmarks.md").read_text()
    assert body.count(TOY.generated_begin) == 1 and (out / "benchmarks_fmnist.png").is_file()
    with pytest.raises(SystemExit, match="refusing to write the --quick report into docs/"):
        bench.main(["--quick", "--report", "--results-dir", results, "--report-dir", profiles.DOCS_DIR])


# --- exit policies on stored outputs --------------------------------------


def test_exit_policies_on_stored_outputs(tmp_path):
    exit_policies = load_script("exit_policies")
    path, _ = _stored_run(str(tmp_path), [1.2e6, 2e6, 3e6, 4e6])
    run = exit_policies.evaluate_run(path)
    rows = {(r["policy"], r["target"], r["value"]): r for r in run["rows"]}
    assert len(rows) == len(exit_policies.POLICIES) * (len(exit_policies.BUDGETS) + len(exit_policies.DROPS))
    # Below the first exit's cost (30%): 25% is unreachable for every policy.
    assert not any(rows[(name, "budget", 0.25)]["reachable"] for name in exit_policies.POLICIES)
    for name in ("confidence", "entropy", "temperature"):
        row = rows[(name, "budget", 0.3)]
        assert row["reachable"] and row["validation_fraction"] <= 0.3 + 1e-9 and row["patience"] is None
    patience = [r for r in run["rows"] if r["policy"] == "patience" and r["reachable"]]
    assert patience and all(r["patience"] >= 2 for r in patience)
    # The same numbers as the library's calibration of that target.
    val, val_labels, test, test_labels = outputs.read_outputs(outputs.outputs_path(path))
    chosen = policy.calibrate(
        val, val_labels, [1.2e6, 2e6, 3e6, 4e6], 4e6, {"max_accuracy_drop": 0.01}, "entropy"
    )
    index = chosen.assign(test)
    assert rows[("entropy", "drop", 0.01)]["test_accuracy"] == pytest.approx(
        float(np.mean(test.argmax(-1)[index, np.arange(index.size)] == test_labels))
    )
    assert len(run["ece"]["temperatures"]) == 4
    summary_rows = exit_policies.summarise([run])
    text = exit_policies.markdown(summary_rows, [run], "cmd")
    assert text.startswith(exit_policies.BEGIN) and text.endswith(exit_policies.END)
    assert "| confidence | — |" in text  # 25% unreachable


def test_a_saved_run_keeps_the_30_percent_policy(tmp_path, tiny_vit):
    from dmpo_bench import runs

    from keras_dmpo import DMPOClassifier, EarlyExitModel

    ee = EarlyExitModel(DMPOClassifier(tiny_vit, num_classes=3, exits=[1, 2]))
    k = ee.num_exits
    rows = [
        {"budget": 0.25, "reachable": False},
        {"budget": 0.3, "reachable": True, "thresholds": [0.7] * (k - 1) + [0.0]},
        {"budget": 0.5, "reachable": True, "thresholds": [0.9] * (k - 1) + [0.0]},
    ]
    path = str(tmp_path / "models" / "clothing_dmpo_seed0.keras")
    runs.save_model(ee, rows, path)
    assert list(EarlyExitModel.load(path, compile=False).thresholds) == [0.7] * (k - 1) + [0.0]
    bench = load_script("dmpo_benchmark")
    assert bench.parse_args(["--save-models", "/m"]).save_models == "/m"


def test_save_models_refuses_to_overwrite_a_model(tmp_path):
    bench = load_script("dmpo_benchmark")
    models = tmp_path / "models"
    models.mkdir()
    (models / "digits_dmpo_seed0.keras").write_bytes(b"a user's model")
    argv = ["--profile", "toy", "--datasets", "digits", "--methods", "dmpo", "--seeds", "0"]
    argv += ["--results-dir", str(tmp_path / "results"), "--save-models", str(models)]
    with pytest.raises(SystemExit, match=r"--save-models: .*digits_dmpo_seed0\.keras exists"):
        bench.main(argv)
    assert (models / "digits_dmpo_seed0.keras").read_bytes() == b"a user's model"
