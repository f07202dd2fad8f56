"""Where StagedRuntime's batch-1 time goes beyond the stage invokes.

Three loops over the same images with every stage run (thresholds 1.0),
interleaved for ``--rounds`` rounds, ms per image:

- ``runtime.predict``: ``StagedRuntime.predict(x, batch_size=1)``;
- ``bare loop``: the same stages called by hand (set input, invoke, read the
  probabilities and the tokens), no preprocessing, scoring or bookkeeping;
- ``invokes only``: ``interpreter.invoke()`` of each stage in turn, inputs
  left as they are (no copies at all).

``runtime.predict`` minus ``bare loop`` is the Python of the runtime;
``bare loop`` minus ``invokes only`` the token copies.

Usage (an export from litert_latency.py --profile dinov2; docs/export.md):

    for t in 1 2; do KERAS_BACKEND=tensorflow python benchmarks/litert_runtime_overhead.py \\
        /tmp/keras_dmpo_litert_latency_dinov2/export_float32 --rounds 5 --threads $t; done

Results are merged by thread count into
``benchmarks/results/litert_runtime_overhead.json``.
"""

import argparse
import json
import os
import time

import numpy as np

from keras_dmpo.litert import StagedRuntime

RESULTS = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    "benchmarks",
    "results",
    "litert_runtime_overhead.json",
)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("directory", help="an exported stage-graph bundle")
    parser.add_argument("--images", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    runtime = StagedRuntime(args.directory, num_threads=args.threads)
    runtime.thresholds = [1.0] * runtime.num_exits
    shape = runtime.image_shape
    low, high = runtime.manifest["preprocessing"].get("input_range", [0.0, 1.0])
    images = np.random.default_rng(0).uniform(low, high, (args.images, *shape)).astype("float32")
    inputs = runtime.preprocess(images)
    stages = runtime._stages
    runtime.predict(images[:2], batch_size=1)  # loads and allocates every stage

    def predict():
        runtime.predict(images, batch_size=1)

    def bare_loop():
        for i in range(len(inputs)):
            value = inputs[i : i + 1]
            for k, stage in enumerate(stages):
                stage.run_single(value)
                stage.output("probabilities")
                if k < len(stages) - 1:
                    value = stage.output("tokens")

    def invokes_only():
        for _ in range(len(inputs)):
            for stage in stages:
                stage._interpreter.invoke()

    loops = {"runtime.predict": predict, "bare loop": bare_loop, "invokes only": invokes_only}
    times = {name: [] for name in loops}
    for _ in range(args.rounds):
        for name, loop in loops.items():
            start = time.perf_counter()
            loop()
            times[name].append(1e3 * (time.perf_counter() - start) / len(images))
    load = os.getloadavg()[0]
    print(f"load average {load:.2f}; ms per image, {args.rounds} rounds:")
    for name, values in times.items():
        print(f"  {name:16s} median {np.median(values):.3f}  all {[round(v, 3) for v in values]}")
    results = {}
    if os.path.isfile(RESULTS):
        with open(RESULTS) as handle:
            results = json.load(handle)
    results[f"threads_{args.threads}"] = {
        "directory": args.directory,
        "images": args.images,
        "rounds": args.rounds,
        "load_average_1m_at_end": load,
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "median_ms_per_image": {name: float(np.median(values)) for name, values in times.items()},
        "ms_per_image": times,
    }
    with open(RESULTS, "w") as handle:
        json.dump(results, handle, indent=2)


if __name__ == "__main__":
    main()
