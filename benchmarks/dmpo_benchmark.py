"""DMPO benchmark: accuracy at FLOPs budgets against plain multi-exit, ablations
and the single-exit PEFT model.

Every method uses the same frozen backbone, the same trunk PEFT (parallel
adapters unless the method says otherwise), the same exits, training subset,
epochs, batch size and optimizer within one table (one data set):

    dmpo          DMPOClassifier defaults (bypass + covariance heads on the
                  early exits) trained with PhaseCallback(PhaseSchedule())
    plain         plain multi-exit: covariance_exits="none", use_bypass=False,
                  uniform loss weights, no PhaseCallback
    no_bypass     DMPO without the bypass adapters
    linear_heads  DMPO with linear heads instead of covariance heads
    one_phase     DMPO architecture, uniform loss weights, no PhaseCallback
    single_exit   exits=[num_layers]: one head on the last block, the 100% reference
    lora          DMPO with peft="lora" instead of adapters
    lora_matched  LoRA at the rank whose trainable parameters match the adapters'

Profiles (``--profile``, benchmarks/dmpo_bench/profiles.py): ``dinov2`` (the
default) is the real DINOv2-S/14 at 112 px on CIFAR-10 and clothing photos
(read from ``--data-root``), Fashion-MNIST and digits; ``toy`` the shipped
``dmpo_vit_tiny`` (or a random ViT when it is absent) on Fashion-MNIST and
digits.

Per run (data set, method, seed): train with ``fit`` (wall time recorded),
wrap in ``EarlyExitModel``, calibrate thresholds on the validation split for
budgets of 25/30/50/75/100% of the full model's FLOPs (an unreachable budget,
one below the first exit's cost, is recorded with the reason), and measure
test accuracy and the achieved test FLOPs fraction at each; each exit alone;
with ``--latency`` the staged LiteRT batch-1 latency at each budget against
the monolithic TFLite model. Each run writes
``<results>/<dataset>/<method>_seed<k>.json`` atomically, after its per-exit
outputs (``.npz`` beside it); existing files are skipped, so an interrupted
benchmark resumes where it stopped.

Data splits are fixed by ``--data-seed`` (same training subset, validation and
test images for every method and seed); the run seed changes the
initialisation of the trainable weights and the shuffling.

``--quick``: a smoke test: seed 0 only, methods dmpo/plain/single_exit, tiny
subsets, 1 epoch; results in ``benchmarks/results/dmpo_dinov2_quick/`` (toy:
``dmpo_quick/``), never mixed with the real ones. It prints an estimate of the full run's time from
the measured per-image times.

``--report`` builds the table (mean ± std over seeds), the claim check and the
plots from the JSON files only: ``docs/benchmarks.md`` (between the profile's
generated-block markers, so hand-written notes in that file survive) and
``docs/benchmarks_*.png``. With ``--quick`` it writes to a temporary
directory and prints the table instead.

``--recalibrate`` calibrates every stored run's budgets again from its
``.npz`` outputs with ``keras_dmpo.policy`` (no training, no model).

Examples:
    KERAS_BACKEND=torch .venv/bin/python benchmarks/dmpo_benchmark.py --profile dinov2 \\
        --datasets cifar10 --methods dmpo --seeds 0
    KERAS_BACKEND=jax .venv/bin/python benchmarks/dmpo_benchmark.py --quick
    KERAS_BACKEND=jax .venv/bin/python benchmarks/dmpo_benchmark.py --quick --report
    .venv/bin/python benchmarks/dmpo_benchmark.py --report
    .venv/bin/python benchmarks/dmpo_benchmark.py --recalibrate
"""

import argparse
import os
import shlex
import sys
import tempfile
import time

from dmpo_bench import backbones, estimate, profiles
from dmpo_bench.budgets import budget_row
from dmpo_bench.data import load_split
from dmpo_bench.outputs import outputs_path, write_outputs
from dmpo_bench.profiles import CANDIDATES, DATASETS, METHODS, PHOTO_ARCHIVES, PROFILES, QUICK_METHODS, REPO
from dmpo_bench.recalibrate import recalibrate
from dmpo_bench.records import load_results, result_path, write_record
from dmpo_bench.report import build_report
from dmpo_bench.runs import RunSettings, log, run_one


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n", 1)[1],
    )
    add = parser.add_argument
    add(
        "--quick",
        action="store_true",
        help="smoke test: seed 0, dmpo/plain/single_exit, tiny subsets, 1 epoch, results in "
        "benchmarks/results/dmpo_dinov2_quick/ (toy: dmpo_quick/); prints the full run's estimated time",
    )
    add(
        "--report",
        action="store_true",
        help="build the report from the JSON files only (no training): docs/benchmarks.md and "
        "docs/benchmarks_*.png, or a temporary directory with --quick",
    )
    add(
        "--recalibrate",
        action="store_true",
        help="no training: calibrate every stored run's budgets again from its .npz outputs with the "
        "current calibration (keeps the run-time budgets as budgets_at_run_time)",
    )
    add(
        "--datasets",
        default=None,
        help=f"comma list of data sets (default: {','.join(DATASETS)}; the toy profile: fashion_mnist,digits)",
    )
    add(
        "--data-root",
        default=None,
        help=f"folder holding {' and '.join(PHOTO_ARCHIVES.values())} (default: {profiles.DEFAULT_DATA_ROOT})",
    )
    add(
        "--methods",
        default=None,
        help=f"comma list of methods (default: all per data set; {', '.join(METHODS)}); "
        "digits runs only dmpo, plain, single_exit",
    )
    add("--seeds", default=None, help="comma list of run seeds (default 0,1,2; --quick: 0)")
    add(
        "--preset",
        default=None,
        help="backbone preset dir or name (default: the profile's; toy: shipped dmpo_vit_tiny, else a random ViT)",
    )
    add("--backbone-seed", type=int, default=0, help="seed of the random fallback backbone")
    add("--exits", default=None, help="comma list of exit blocks (default: the model's default)")
    add("--epochs", type=int, default=None, help="override the per-data-set epochs")
    add("--train-size", type=int, default=None, help="override the per-data-set training subset")
    add(
        "--profile",
        choices=sorted(PROFILES),
        default=profiles.DEFAULT_PROFILE,
        help="dinov2: the real DINOv2-S/14 at 112 px (default); toy: the shipped dmpo_vit_tiny",
    )
    add(
        "--image-size",
        type=int,
        default=None,
        help="input size for backbones that interpolate (DINOv2; default: the profile's)",
    )
    add(
        "--schedule",
        choices=["constant", "cosine"],
        default=None,
        help="learning-rate schedule (default: the profile's)",
    )
    add("--batch-size", type=int, default=None, help="default: the profile's (toy 64, dinov2 32)")
    add(
        "--learning-rate",
        type=float,
        default=None,
        help="peak learning rate (default: the profile's; dinov2 6e-3, toy 2e-3)",
    )
    add("--weight-decay", type=float, default=1e-4)
    add("--data-seed", type=int, default=0, help="seed of the data splits (fixed across runs)")
    add(
        "--latency",
        action="store_true",
        help="also export TFLite once per run and time staged LiteRT batch-1 vs monolithic",
    )
    add("--latency-images", type=int, default=200, help="test images timed at batch 1")
    add(
        "--save-models",
        default=None,
        metavar="DIR",
        help="also save each run's EarlyExitModel (30%% thresholds) as DIR/DATASET_METHOD_seedN.keras",
    )
    add(
        "--dtype-policy",
        default="float32",
        help="Keras dtype policy of the models (e.g. mixed_bfloat16); other than float32, the default "
        "results folder gets the policy's name as a suffix",
    )
    add(
        "--results-dir",
        default=None,
        help="JSON folder (default benchmarks/results/dmpo_dinov2, toy: dmpo; their _quick twins with --quick)",
    )
    add(
        "--report-dir",
        default=None,
        help="where --report writes (default docs/, or a temporary directory with --quick)",
    )
    return parser.parse_args(argv)


def command_line():
    return "KERAS_BACKEND={} python benchmarks/dmpo_benchmark.py {}".format(
        os.environ.get("KERAS_BACKEND", "<default>"), " ".join(shlex.quote(a) for a in sys.argv[1:])
    ).strip()


def report(args, profile, results_dir):
    out_dir = args.report_dir or (
        tempfile.mkdtemp(prefix="dmpo_benchmark_quick_report_") if args.quick else profiles.DOCS_DIR
    )
    if args.quick and os.path.abspath(out_dir) == os.path.abspath(profiles.DOCS_DIR):
        raise SystemExit("refusing to write the --quick report into docs/")
    text, path, _ = build_report(results_dir, out_dir, profile, quick=args.quick, command=command_line())
    print(text)
    print(f"report written to {path}")
    if args.quick:
        for line in estimate.estimate_lines(load_results(results_dir), profile):
            log(line)


def methods_for(dataset, profile, requested, quick):
    """The methods to run on ``dataset``: the profile's (those asked for, if
    any); candidate changes to the method only when asked for by name."""
    methods = [m for m in profile.methods[dataset] if requested is None or m in requested]
    methods += [m for m in CANDIDATES if requested and m in requested and m not in methods]
    if quick and requested is None:
        methods = [m for m in methods if m in QUICK_METHODS]
    return methods


def run_settings(args, sizes, requested_shape, data):
    return RunSettings(
        epochs=sizes["epochs"],
        batch_size=args.batch_size,
        exits=[int(e) for e in args.exits.split(",")] if args.exits else None,
        quick=args.quick,
        image_shape=requested_shape,
        optimizer=dict(
            learning_rate=args.learning_rate, weight_decay=args.weight_decay, schedule=args.schedule
        ),
        data_seed=args.data_seed,
        data_source=data.get("source"),
        latency=args.latency,
        latency_images=args.latency_images,
        save_models_dir=args.save_models,
        dtype_policy=args.dtype_policy,
    )


def train_all(args, profile, results_dir):
    """Every (data set, method, seed) run without a record yet."""
    known = profile.datasets
    datasets = args.datasets.split(",") if args.datasets else known
    for d in datasets:
        if d not in known:
            raise SystemExit(f"unknown data set {d!r} for --profile {args.profile}; known: {known}")
    seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else ([0] if args.quick else [0, 1, 2])
    requested = args.methods.split(",") if args.methods else None
    for m in requested or []:
        if m not in METHODS:
            raise SystemExit(f"unknown method {m!r}; known: {list(METHODS)}")
    command = command_line()

    from keras_dmpo.models.vit_stages import load_vit_backbone
    from keras_dmpo.preset_registry import target_classes

    preset_dir, backbone_source = backbones.resolve_backbone(args.preset, args.backbone_seed)
    backbone = (preset_dir, backbone_source, backbones.backbone_sha256(preset_dir))
    requested_shape = (args.image_size, args.image_size, 3) if args.image_size else None
    image_shape = tuple(
        load_vit_backbone(preset_dir, image_shape=requested_shape).get_config()["image_shape"]
    )
    log(f"backbone: {backbone_source} ({preset_dir})")
    log(f"results: {results_dir}")
    wall_start = time.time()
    done = 0
    for dataset in datasets:
        methods = methods_for(dataset, profile, requested, args.quick)
        sizes = dict(profile.data[dataset]["quick" if args.quick else "full"])
        if args.epochs:
            sizes["epochs"] = args.epochs
        if args.train_size:
            sizes["train_size"] = args.train_size
        todo = [
            (m, s)
            for s in seeds
            for m in methods
            if not os.path.isfile(result_path(results_dir, dataset, m, s))
        ]
        if args.save_models:
            for m, s in todo:
                saved = os.path.join(args.save_models, f"{dataset}_{m}_seed{s}.keras")
                if os.path.exists(saved):
                    raise SystemExit(f"--save-models: {saved} exists; move it away or give another folder")
        log(f"== {dataset}: {len(todo)} runs to do, {len(methods) * len(seeds) - len(todo)} already done")
        if not todo:
            continue
        classes = target_classes(backbones.shipped_preset_name(preset_dir), dataset)
        data = load_split(dataset, sizes, args.data_seed, image_shape, classes, args.data_root)
        settings = run_settings(args, sizes, requested_shape, data)
        for method, seed in todo:
            record = run_one(dataset, method, seed, data, settings, backbone, command)
            path = result_path(results_dir, dataset, method, seed)
            # The outputs first: a record never points at a missing file.
            write_outputs(outputs_path(path), record.pop("_outputs"))
            write_record(path, record)
            done += 1
            b30 = budget_row(record, 0.3)
            acc30 = f"{100 * b30['test_accuracy']:.2f}%" if b30 and b30.get("reachable") else "unreachable"
            log(
                f"    wrote {os.path.relpath(path, REPO)}: train {record['timing']['train_seconds']:.0f} s "
                f"({record['timing']['steady_train_ms_per_image']} ms/image steady), @30% {acc30}, "
                f"last exit alone {100 * record['single_exits'][-1]['test_accuracy']:.2f}%"
            )
    log(f"done: {done} runs in {time.time() - wall_start:.0f} s")
    if args.quick:
        for line in estimate.estimate_lines(load_results(results_dir), profile, latency=args.latency):
            log(line)


def main(argv=None):
    args = parse_args(argv)
    profile = PROFILES[args.profile]
    args.preset = args.preset or profile.preset
    args.batch_size = args.batch_size or profile.batch_size
    args.learning_rate = args.learning_rate or profile.learning_rate
    args.schedule = args.schedule or profile.schedule
    args.image_size = args.image_size or profile.image_size
    results_dir = args.results_dir or profile.results_dir(quick=args.quick)
    try:
        import keras

        keras.DTypePolicy(args.dtype_policy)
    except ValueError as error:
        raise SystemExit(f"--dtype-policy {args.dtype_policy!r}: {error}") from None
    if args.dtype_policy != "float32" and not args.results_dir:
        results_dir = f"{results_dir}_{args.dtype_policy}"
    if args.report:
        report(args, profile, results_dir)
    elif args.recalibrate:
        changed = recalibrate(results_dir, log=log)
        log(f"recalibrated {changed} runs in {results_dir}; rebuild the report with --report")
    else:
        train_all(args, profile, results_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
