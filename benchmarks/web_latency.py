"""Batch-1 latency of an early-exit bundle in the browser (LiteRT.js in
headless Chromium) against native LiteRT on the same graphs and threads.

Usage (the table in docs/web.md was made with the demo's model):

    make demo                                   # leaves dmpo-demo/model.keras
    KERAS_BACKEND=tensorflow python benchmarks/web_latency.py \
        --model dmpo-demo/model.keras --data fashion_mnist

What it does:

1. Loads the ``EarlyExitModel`` and calibrates one policy per budget
   (30/50/75% of the full model's FLOPs) on the validation split of
   ``--data`` (the demo's: seed 0, 1,024 images).
2. Exports it with ``web=True`` (batch-1 graphs) into ``--work-dir``, with
   ``--images`` test images as one float32 file beside the graphs.
3. Native: ``StagedRuntime(num_threads=t)`` per budget, ``predict`` one
   image at a time, and the monolithic graph; t = 1 and 2.
4. Browser: ``keras-dmpo web``'s server and page in headless Chromium,
   with cross-origin isolation (threaded wasm; 1 and 2 threads) and without
   (single-threaded wasm); per budget the same images, one at a time.

Reported per configuration and budget: ms per image (median of
``--repeats`` passes), the FLOPs share spent, staged ÷ (FLOPs share ×
monolithic) and browser ÷ native on the same thread count. Writes
``benchmarks/results/web_latency.json`` and prints a markdown table. The JSON
records the load average: the machine is idle only where that says so.
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

from keras_dmpo.atomic_io import write_json_atomic  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUDGETS = (0.3, 0.5, 0.75)
INPUTS_NAME = "bench_inputs.f32"
NODE_SCRIPT = os.path.join(ROOT, "benchmarks", "web_latency.mjs")
# (cross-origin isolation, threads): without isolation the page cannot use
# SharedArrayBuffer, so LiteRT.js loads its single-threaded wasm.
BROWSER_CONFIGS = ((True, 1), (True, 2), (False, 1))


def log(message):
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def budget_policies(ee, data, budgets):
    """One calibrated ``ExitPolicy`` dict per FLOPs budget, on the validation split."""
    from keras_dmpo.policy import make_target

    x_val, y_val = data["validation"]
    probabilities = ee.exit_probabilities(x_val)
    policies = []
    for budget in budgets:
        ee.calibrate_from_probabilities(probabilities, np.asarray(y_val), make_target(budget, None))
        policies.append(ee.policy.to_dict())
    return policies


def web_bundle(ee, data, directory, num_images):
    """The batch-1 export, with a few samples for the page and the timed inputs."""
    from keras_dmpo.export.web_samples import write_web_samples
    from keras_dmpo.litert import StagedRuntime

    x_test, y_test = data["test"]
    x_test, y_test = np.asarray(x_test[:num_images]), np.asarray(y_test[:num_images])
    ee.export_tflite(directory, overwrite=True, class_names=data.get("class_names"), web=True)
    write_web_samples(directory, x_test[:12], y_test[:12])
    model_space = StagedRuntime(directory, verify_hashes=False).preprocess(x_test)
    model_space.astype("<f4").tofile(os.path.join(directory, INPUTS_NAME))
    return x_test


def per_image_ms(run, images, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for image in images:
            run(image[None])
        times.append((time.perf_counter() - start) / len(images))
    return 1e3 * float(np.median(times))


def native_latency(directory, policies, images, num_threads, repeats):
    from keras_dmpo.litert import StagedRuntime
    from keras_dmpo.policy import ExitPolicy

    runtime = StagedRuntime(directory, num_threads=num_threads)
    for image in images[:10]:  # load and warm every interpreter
        runtime.predict(image[None])
        runtime.predict_monolithic(image[None])
    monolithic = per_image_ms(runtime.predict_monolithic, images, repeats)
    budgets = []
    for policy in policies:
        runtime.policy = ExitPolicy.from_dict(policy)
        out = runtime.predict(images)
        budgets.append(
            {
                "ms": per_image_ms(runtime.predict, images, repeats),
                "flopsShare": float(out["flops"].mean() / runtime.full_model_flops),
                "exits": out["exit_index"].tolist(),
            }
        )
    return {"numThreads": num_threads, "images": len(images), "monolithicMs": monolithic, "budgets": budgets}


def browser_latency(directory, policies, isolation, num_threads, repeats):
    from keras_dmpo.web.browser import find_node, node_environment
    from keras_dmpo.web.npm_deps import ensure_node_modules
    from keras_dmpo.web.server import make_server

    node_modules = ensure_node_modules(dev=True)
    server = make_server(directory, port=0, isolation=isolation, node_modules=node_modules)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as handle:
            json.dump(
                {"policies": policies, "numThreads": num_threads, "repeats": repeats, "inputs": INPUTS_NAME},
                handle,
            )
        result = subprocess.run(
            [find_node(), NODE_SCRIPT, server.url, handle.name],
            env=node_environment(node_modules),
            capture_output=True,
            text=True,
            timeout=3600,
        )
        os.unlink(handle.name)
        if result.returncode != 0:
            raise RuntimeError(f"{NODE_SCRIPT} failed:\n{result.stderr[-3000:]}")
        report = json.loads(result.stdout.strip().splitlines()[-1])
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
    report["isolation"] = isolation
    return report


def ratios(report, native_by_threads):
    """Staged ÷ (FLOPs share × monolithic) per budget, and browser ÷ native."""
    native = native_by_threads.get(report["numThreads"])
    for k, row in enumerate(report["budgets"]):
        row["staged_over_flops_share_x_monolithic"] = row["ms"] / (row["flopsShare"] * report["monolithicMs"])
        if native is not None and native is not report:
            row["browser_over_native"] = row["ms"] / native["budgets"][k]["ms"]
    if native is not None and native is not report:
        report["monolithic_browser_over_native"] = report["monolithicMs"] / native["monolithicMs"]
    return report


def markdown(result):
    lines = [
        "| runtime | threads | budget | FLOPs share | ms / image | staged ÷ (share × full) | ÷ native |",
        "|---|---|---|---|---|---|---|",
    ]
    rows = [("native LiteRT", r) for r in result["native"]] + [
        (f"LiteRT.js ({'isolated' if r['isolation'] else 'not isolated'})", r) for r in result["browser"]
    ]
    for name, report in rows:
        full_ratio = report.get("monolithic_browser_over_native")
        lines.append(
            f"| {name} | {report['numThreads']} | full (monolithic) | 100% | {report['monolithicMs']:.2f} | – | "
            f"{'–' if full_ratio is None else f'{full_ratio:.2f}'} |"
        )
        for budget, row in zip(result["budgets"], report["budgets"]):
            over = row.get("browser_over_native")
            lines.append(
                f"| {name} | {report['numThreads']} | {budget:.0%} | {row['flopsShare']:.1%} | {row['ms']:.2f} | "
                f"{row['staged_over_flops_share_x_monolithic']:.2f} | {'–' if over is None else f'{over:.2f}'} |"
            )
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model", required=True, help="a saved EarlyExitModel (.keras), e.g. dmpo-demo/model.keras"
    )
    parser.add_argument(
        "--data", default="fashion_mnist", help="named data set or class-per-folder directory"
    )
    parser.add_argument("--images", type=int, default=200, help="test images timed one at a time")
    parser.add_argument("--validation-images", type=int, default=1024, help="for the calibration")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--work-dir", default=os.path.join(tempfile.gettempdir(), "keras_dmpo_web_latency"))
    parser.add_argument("--output", default=os.path.join(ROOT, "benchmarks", "results", "web_latency.json"))
    args = parser.parse_args(argv)

    from keras_dmpo.datasets import load_data
    from keras_dmpo.inference.early_exit import EarlyExitModel

    load_average_at_start = list(os.getloadavg())
    ee = EarlyExitModel.load(args.model, compile=False)
    data = load_data(
        args.data,
        tuple(ee.model.image_shape),
        seed=0,
        validation_size=args.validation_images,
        test_size=args.images,
    )
    log(f"calibrating budgets {BUDGETS} on {len(data['validation'][0])} validation images")
    policies = budget_policies(ee, data, BUDGETS)
    bundle = os.path.join(args.work_dir, "bundle")
    log(f"exporting the web bundle to {bundle}")
    images = web_bundle(ee, data, bundle, args.images)
    native = {}
    for num_threads in (1, 2):
        log(f"native LiteRT, {num_threads} thread(s)")
        native[num_threads] = native_latency(bundle, policies, images, num_threads, args.repeats)
    browser = []
    for isolation, num_threads in BROWSER_CONFIGS:
        log(f"LiteRT.js in Chromium, isolation={isolation}, {num_threads} thread(s)")
        browser.append(
            ratios(browser_latency(bundle, policies, isolation, num_threads, args.repeats), native)
        )
    for report in native.values():
        ratios(report, native)
    for report in browser:
        same = [
            np.mean(np.equal(b["exits"], n["exits"])) for b, n in zip(report["budgets"], native[1]["budgets"])
        ]
        report["same_exit_as_native"] = [float(s) for s in same]
    result = {
        "command": "KERAS_BACKEND=tensorflow python benchmarks/web_latency.py "
        + " ".join(argv or sys.argv[1:]),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "model": args.model,
        "data": args.data,
        "budgets": list(BUDGETS),
        "policies": policies,
        "native": list(native.values()),
        "browser": browser,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "load_average_at_start": load_average_at_start,
        "load_average_at_end": list(os.getloadavg()),
    }
    for report in result["native"] + result["browser"]:
        for row in report["budgets"]:
            row.pop("exits")
    write_json_atomic(args.output, result)
    print(markdown(result))
    log(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
