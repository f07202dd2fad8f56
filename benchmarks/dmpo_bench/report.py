"""``--report``: the benchmark's markdown and plots, from the run records only.

The text goes between the profile's generated-block markers in
``benchmarks.md`` (so hand-written notes in that file survive); one plot per
data set beside it. No Keras: records, means over seeds (``summary``) and
tables (``report_tables``).
"""

import os

from dmpo_bench import report_tables as tables
from dmpo_bench.plots import plot_dataset
from dmpo_bench.profiles import ADOPTED, DATASET_TITLES, DATASETS, METHODS, PROBE_DIR, REPO
from dmpo_bench.records import load_results
from dmpo_bench.summary import aggregate, claim_check
from keras_dmpo.atomic_io import write_bytes_atomic

DEFAULT_COMMAND = "python benchmarks/dmpo_benchmark.py --report"
ACCURACY_NOTE = (
    "Accuracy: test accuracy (%) with thresholds calibrated on the validation split for each budget "
    "(all budgets of a run together, smallest first, so that validation accuracy never falls as the "
    "budget grows) "
    "(fraction of the full model's FLOPs, the backbone with only the last head), mean ± sample std over "
    "seeds; in brackets the test FLOPs actually spent (%). '—' = budget below the cost of the first exit. "
    "Train time and ms / train image are wall time (they include other jobs on the machine and pauses of "
    "the benchmark for idle-machine timings); CPU ms / train image is the process's CPU time over the "
    "steady training steps, the figure to compare ('—' where a run did not record it)."
)


def report_order(aggregated):
    """The known data sets first (photo sets lead), then any others."""
    return [d for d in DATASETS if d in aggregated] + [d for d in aggregated if d not in DATASETS]


def plot_name(dataset, profile, quick):
    name = (
        "benchmarks_fmnist" if dataset == "fashion_mnist" else f"benchmarks_{dataset}"
    ) + profile.plot_suffix
    return name + ("_quick.png" if quick else ".png")


def header_lines(records, results_dir, command, quick):
    lines = []
    if quick:
        lines += ["**SMOKE TEST (--quick): tiny subset, one epoch, one seed. Not a result.**", ""]
    sources = sorted({r.get("backbone_source", "?") for r in records})
    backends = sorted({r["environment"]["backend"] for r in records})
    run_commands = sorted({r.get("command", "?") for r in records})
    lines += [
        f"Built from {len(records)} JSON result files in `{os.path.relpath(results_dir, REPO)}/` by "
        f"`{command or DEFAULT_COMMAND}`.",
        "",
        "Runs made with: " + "; ".join(f"`{c}`" for c in run_commands),
        "",
        f"backbone_source: {'; '.join(sources)}. Backend: {', '.join(backends)}.",
        "",
        ACCURACY_NOTE,
        "",
    ]
    notes = tables.consistency_notes(records)
    if notes:
        lines += [f"- {n}" for n in notes] + [""]
    return lines


def dataset_lines(dataset, methods, runs, probe_path):
    """One data set's section: its setup, the budget table, each exit alone,
    the frozen probe, the calibration comparison and the latency table."""
    cfg = runs[0]["config"]
    multi = [r for r in runs if r["method"] != "single_exit"] or runs
    multi_exits = multi[0]["config"]["exits"]
    order = [m for m in METHODS if m in methods] + [m for m in methods if m not in METHODS]
    title = DATASET_TITLES.get(dataset, dataset)
    source = cfg.get("data_source")
    opt = cfg["optimizer"]
    lines = [
        f"### {title}" + ("" if title == dataset else f" (`{dataset}`)"),
        "",
        *([f"Data: {source}.", ""] if source else []),
        f"{cfg['train_images']} training / {cfg['validation_images']} validation / {cfg['test_images']} test "
        f"images, {cfg['epochs']} epoch(s), batch {cfg['batch_size']}, AdamW(lr={opt['learning_rate']}, "
        f"wd={opt['weight_decay']}), exits at blocks {multi_exits} (single_exit: the last only), "
        f"data seed {cfg['data_seed']}.",
        "",
    ]
    lines += tables.accuracy_table(methods, order)
    lines += tables.each_exit_table(methods, order)
    lines += tables.probe_lines(probe_path, multi_exits, cfg["data_seed"])
    lines += tables.calibration_comparison(runs, order)
    lines += tables.latency_table(methods, order)
    return lines


def build_report(results_dir, out_dir, profile, quick=False, command=None, plot=True, probe_dir=PROBE_DIR):
    """Write ``benchmarks.md`` (its generated block) and the plots into
    ``out_dir`` from the records under ``results_dir``.

    Args:
        profile: the ``Profile`` whose markers, plot names and probe files
            are used.
        command: the command line named in the report.
        plot: False leaves the plots out (and their links).
        probe_dir: where the frozen-probe results are.

    Returns:
        ``(markdown text, path of benchmarks.md, the first data set's claim)``.
    """
    records = load_results(results_dir)
    if not records:
        raise SystemExit(f"no result files under {results_dir}; run the benchmark first")
    aggregated = aggregate(records)
    os.makedirs(out_dir, exist_ok=True)
    lines = [profile.generated_begin, ""] + header_lines(records, results_dir, command, quick)
    for dataset in report_order(aggregated):
        methods = aggregated[dataset]
        runs = [r for r in records if r["dataset"] == dataset]
        probe_file = profile.probe_files.get(dataset)
        probe_path = os.path.join(probe_dir, probe_file) if probe_file else None
        lines += dataset_lines(dataset, methods, runs, probe_path)
        if plot:
            name = plot_name(dataset, profile, quick)
            plot_dataset(methods, os.path.join(out_dir, name), dataset, quick)
            lines += ["", f"![{dataset}: accuracy vs FLOPs]({name})"]
        lines.append("")
    claim = None
    for dataset in report_order(aggregated):
        checked = claim_check(aggregated, dataset)
        claim = claim or checked  # the first data set's is returned
        lines += tables.claim_lines(checked, quick)
        # A variant adopted on validation is checked against the same bars.
        for method in ADOPTED:
            if method in aggregated[dataset]:
                lines += tables.claim_lines(claim_check(aggregated, dataset, method), quick)
    lines += [profile.generated_end]
    text = "\n".join(lines) + "\n"
    path = os.path.join(out_dir, "benchmarks.md")
    write_generated(path, text, profile.generated_begin, profile.generated_end)
    return text, path, claim


def write_generated(path, block, begin, end):
    """Replace the generated block (``begin`` ... ``end``) of ``path``, or
    create the file, keeping whatever is written around it by hand."""
    if os.path.isfile(path):
        with open(path) as handle:
            old = handle.read()
        if begin in old and end in old:
            head = old.split(begin)[0]
            tail = old.split(end, 1)[1]
            new = head + block.rstrip("\n") + tail
        else:
            new = old.rstrip("\n") + "\n\n" + block
    else:
        new = "# DMPO benchmark\n\n" + block
    write_bytes_atomic(path, new.encode("utf-8"))
