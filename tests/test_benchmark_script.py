"""The DMPO benchmark's report builder on hand-made JSON results (no training)."""

import importlib.util
import json
import math
import os

import pytest

SCRIPT = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks", "dmpo_benchmark.py"
)


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("dmpo_benchmark", SCRIPT)
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


def test_mean_std(bench):
    mean, std, n = bench.mean_std([1.0, 2.0, 3.0])
    assert (mean, n) == (2.0, 3) and std == pytest.approx(1.0)  # sample std (ddof=1)
    assert bench.mean_std([5.0]) == (5.0, None, 1)
    assert bench.mean_std([]) == (None, None, 0)


def test_aggregate_and_claim_pass(bench, tmp_path):
    records = bench.load_results(_results(tmp_path))
    assert len(records) == 6
    agg = bench.aggregate(records)
    dmpo = agg["fashion_mnist"]["dmpo"]
    mean, std = dmpo["budgets"][0.3]["accuracy"]
    assert mean == pytest.approx(91.0) and std == pytest.approx(math.sqrt(2.0))
    assert dmpo["budgets"][0.25]["n"] == 0
    assert dmpo["budgets"][0.25]["unreachable_reasons"] == ["below the cost of the first exit"]
    assert dmpo["train_seconds"][0] == pytest.approx(105.0)
    claim = bench.claim_check(agg)
    # DMPO@30 = 91.0; single@100 = 92.0 -> target 91.0 (gap 0); plain@30 = 88.0 -> target 90.0 (gap +1)
    assert claim["single_exit_100"][0] == pytest.approx(92.0)
    assert [c["passed"] for c in claim["checks"]] == [True, True]
    assert claim["checks"][0]["gap"] == pytest.approx(0.0, abs=1e-9)
    assert claim["checks"][1]["gap"] == pytest.approx(1.0)
    assert claim["passed"] is True


def test_claim_fail_and_missing(bench, tmp_path):
    agg = bench.aggregate(bench.load_results(_results(tmp_path, dmpo30=(0.89, 0.90))))
    claim = bench.claim_check(agg)  # DMPO@30 = 89.5: 0.5 below single-1, 0.5 below plain+2
    assert [c["passed"] for c in claim["checks"]] == [False, False]
    assert claim["passed"] is False
    del agg["fashion_mnist"]["plain"]
    claim = bench.claim_check(agg)
    assert claim["checks"][1]["passed"] is None and claim["passed"] is None


def test_regime_and_budget_checks(bench, tmp_path):
    results = tmp_path / "results"
    for seed in (0, 1):
        dmpo = _record("dmpo", seed, {0.25: 0.90, 0.3: 0.91, 0.5: 0.89, 1.0: 0.94})
        dmpo["single_exits"][0]["test_accuracy"] = 0.925  # 1.5 below single: under the 2-point bar
        _write(results, dmpo)
        plain = _record("plain", seed, {0.3: 0.85})
        plain["single_exits"][0]["test_accuracy"] = 0.60
        _write(results, plain)
        _write(results, _record("single_exit", seed, {1.0: 0.94}, single=True))
    claim = bench.claim_check(bench.aggregate(bench.load_results(str(results))))
    plain_row, dmpo_row = claim["regime"]
    assert plain_row["passed"] and plain_row["gap"] == pytest.approx(94 - 60 - 5)
    assert dmpo_row["passed"] is False and dmpo_row["gap"] == pytest.approx(94 - 92.5 - 2)
    # 50% is less accurate than 25% (89 < 90): the budget does not buy accuracy
    assert claim["budget"]["passed"] is False


@pytest.mark.parametrize("acc50, passed", [(0.905, False), (0.912, True), (0.91, True)])
def test_budget_bar_needs_one_point(bench, tmp_path, acc50, passed):
    results = tmp_path / "results"
    _write(results, _record("dmpo", 0, {0.25: 0.90, 0.3: 0.90, 0.5: acc50}))
    claim = bench.claim_check(bench.aggregate(bench.load_results(str(results))))
    assert claim["budget"]["passed"] is passed
    assert claim["budget"]["gap"] == pytest.approx(100 * acc50 - 90 - 1)


def test_photo_sets_lead_the_report_with_the_probe(bench, tmp_path, monkeypatch):
    results = _results(tmp_path)
    for method in ("dmpo", "plain"):
        record = _record(method, 0, {0.3: 0.7}, dataset="cifar10")
        record["config"]["data_source"] = "image files at /x (test)"
        _write(results, record)
    probe_dir = tmp_path / "repo" / "benchmarks" / "results" / "depth_probe"
    probe_dir.mkdir(parents=True)
    probe = {"block_accuracy": [0.1 * (i % 10) for i in range(12)], "train_images": 100, "test_images": 200}
    (probe_dir / bench.PROBE_FILES["cifar10"]).write_text(json.dumps(probe))
    monkeypatch.setattr(bench, "REPO", str(tmp_path / "repo"))
    # The toy profile's report has no probe of its own backbone: no row.
    text, _, _ = bench.build_report(results, str(tmp_path / "out"), plot=False)
    assert "| frozen probe" not in text
    monkeypatch.setattr(bench, "PROFILE", "dinov2")
    text, _, _ = bench.build_report(results, str(tmp_path / "out"), plot=False)
    assert text.index("### CIFAR-10 photographs") < text.index("### Fashion-MNIST")
    assert "Data: image files at /x (test)." in text
    row = next(line for line in text.splitlines() if line.startswith("| frozen probe"))
    # exits 1..8 of the synthetic records: block b's probe accuracy is 10 * (b - 1) % 100
    assert row.startswith("| frozen probe (100 / 200 images) | 0.00 (block 1) | 10.00 (block 2) |")
    assert row.rstrip().endswith("70.00 (block 8) |")


def test_photo_source_says_where_to_get_the_data(bench, tmp_path):
    with pytest.raises(SystemExit, match=r"clothing: .*clothing-small.tar not found; pass --data-root DIR"):
        bench.photo_source("clothing", str(tmp_path))
    (tmp_path / "cifar10-jpeg.tar.gz").write_bytes(b"x")
    assert bench.photo_source("cifar10", str(tmp_path)) == str(tmp_path / "cifar10-jpeg.tar.gz")


def test_build_report_keeps_hand_written_notes(bench, tmp_path):
    results = _results(tmp_path)
    out = tmp_path / "docs"
    out.mkdir()
    (out / "benchmarks.md").write_text("# Notes\n\nhand-written attempts\n")
    text, path, claim = bench.build_report(results, str(out), command="cmd --report", plot=False)
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
    bench.build_report(results, str(out), command="cmd --report", plot=False)
    body2 = open(path).read()
    assert body2.count(bench.GENERATED_BEGIN) == 1 and "hand-written attempts" in body2


def test_report_plot_and_mixed_settings_warning(bench, tmp_path):
    results = _results(tmp_path)
    odd = _record("plain", 2, {0.3: 0.5})
    odd["config"]["epochs"] = 9
    _write(results, odd)
    text, _, _ = bench.build_report(results, str(tmp_path / "out"), quick=True)
    assert "WARNING: fashion_mnist runs differ in training setup" in text
    assert "SMOKE TEST" in text
    assert (tmp_path / "out" / "benchmarks_fmnist_quick.png").stat().st_size > 1000


def test_write_json_atomic_and_estimate(bench, tmp_path):
    path = str(tmp_path / "a" / "b.json")
    bench.write_json_atomic(path, {"x": 1})
    assert json.load(open(path)) == {"x": 1}
    assert os.listdir(tmp_path / "a") == ["b.json"]
    records = bench.load_results(_results(tmp_path))
    total, detail = bench.estimate_full_run(records)
    assert set(detail) == {"fashion_mnist", "digits"} and total == pytest.approx(sum(detail.values()))
    # fashion_mnist, 7 methods x 3 seeds, each: 4 ms per training image x
    # images x epochs + 0.1 s per evaluated image + 3 s first steps + 15 s
    train_images = (
        bench.FULL_TRAIN_IMAGES["fashion_mnist"] * bench.DATA_DEFAULTS["fashion_mnist"]["full"]["epochs"]
    )
    eval_images = bench.FULL_EVAL_IMAGES["fashion_mnist"]
    runs = 3 * len(bench.METHODS_BY_DATASET["fashion_mnist"])
    assert detail["fashion_mnist"] == pytest.approx(
        runs * (0.004 * train_images + 0.1 * eval_images + 3 + 15)
    )


def test_idle_estimate_uses_cpu_time(bench, tmp_path):
    records = bench.load_results(_results(tmp_path))
    wall, _ = bench.estimate_full_run(records)
    # without CPU times the idle estimate falls back to the wall times
    assert bench.estimate_full_run(records, idle_cores=2)[0] == pytest.approx(wall)
    for r in records:  # 2 CPU-ms per image on 2 cores = 1 ms wall: a quarter of the 4 ms measured
        r["timing"]["steady_train_cpu_ms_per_image"] = 2.0
    idle, detail = bench.estimate_full_run(records, idle_cores=2)
    train_images = (
        bench.FULL_TRAIN_IMAGES["fashion_mnist"] * bench.DATA_DEFAULTS["fashion_mnist"]["full"]["epochs"]
    )
    eval_images = bench.FULL_EVAL_IMAGES["fashion_mnist"]
    # training and evaluation scale by 1/4, the first steps too; the 15 s do not
    runs = 3 * len(bench.METHODS_BY_DATASET["fashion_mnist"])
    assert detail["fashion_mnist"] == pytest.approx(
        runs * (0.001 * train_images + 0.025 * eval_images + 0.75 + 15)
    )


def test_report_compares_run_time_and_current_calibration(bench, tmp_path):
    results = tmp_path / "results"
    for seed, (was, now) in enumerate(((0.89, 0.91), (0.87, 0.90))):
        dmpo = _record("dmpo", seed, {0.3: 0.90, 0.5: now})
        dmpo["budgets_at_run_time"] = _record("dmpo", seed, {0.3: 0.90, 0.5: was})["budgets"]
        dmpo["calibration_at_run_time"] = bench.FIRST_CALIBRATION
        dmpo["calibration"] = bench.CALIBRATION
        _write(results, dmpo)
    _write(results, _record("plain", 0, {0.3: 0.85}))  # calibrated once: not in the comparison
    text, _, _ = bench.build_report(str(results), str(tmp_path / "out"), plot=False)
    comparison = text[text.index("Calibration at run time") :]
    row = next(line for line in comparison.splitlines() if line.startswith("| dmpo |"))
    # 50%: run time (89 + 87) / 2 = 88.00, now (91 + 90) / 2 = 90.50; FLOPs 49.
    assert row.split(" | ")[4] == "88.00 (49) / 88.0 → 90.50 (49) / 90.5"
    assert "| plain |" not in comparison.split("\n\n")[2]


def test_report_checks_the_bars_per_data_set(bench, tmp_path):
    results = _results(tmp_path)
    _write(results, _record("dmpo", 0, {0.25: 0.97, 0.3: 0.98, 0.5: 0.98}, dataset="digits"))
    _write(results, _record("single_exit", 0, {1.0: 0.97}, dataset="digits", single=True))
    text, _, claim = bench.build_report(results, str(tmp_path / "out"), plot=False)
    assert claim["dataset"] == "fashion_mnist"
    digits = text[text.index("### Claim check (digits, means over seeds)") :]
    assert "PASS: DMPO@30% 98.00 vs target 96.00 (margin +2.00 points)" in digits
    assert "vs plain@30% + 2: not evaluated (missing results)" in digits
    assert text.index("### Claim check (fashion_mnist") < text.index("### Claim check (digits")


def test_stored_outputs_round_trip(bench, tmp_path):
    import numpy as np

    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 20, 4)) * 5
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    labels = rng.integers(0, 4, 20)
    path = str(tmp_path / "run.npz")
    bench.write_outputs_atomic(
        path,
        {
            "val_log_probabilities": probs,
            "val_labels": labels,
            "test_log_probabilities": probs[:, :10],
            "test_labels": labels[:10],
        },
    )
    val, val_labels, test, test_labels = bench.read_outputs(path)
    np.testing.assert_allclose(val, probs, atol=2e-3)  # float16 log-probabilities
    np.testing.assert_allclose(val.sum(-1), 1.0)
    np.testing.assert_array_equal(val.argmax(-1), probs.argmax(-1))
    np.testing.assert_array_equal(val_labels, labels)
    assert test.shape == (3, 10, 4) and test_labels.tolist() == labels[:10].tolist()
