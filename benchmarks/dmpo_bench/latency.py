"""``--latency``: the staged LiteRT model's batch-1 latency at each budget
against the monolithic TFLite model (one ``export_tflite`` per run, then the
runtime's thresholds set per budget)."""

import os
import tempfile
import time


def measure_latency(ee, budgets, x_test, num_images, repeats=3):
    """Staged LiteRT batch-1 latency per budget vs the monolithic TFLite model."""
    import numpy as np

    from keras_dmpo.litert import StagedRuntime

    images = np.asarray(x_test[:num_images], "float32")
    with tempfile.TemporaryDirectory(prefix="dmpo_bench_tflite_") as tmp:
        export_dir = os.path.join(tmp, "tflite")
        export_start = time.perf_counter()
        ee.export_tflite(export_dir)
        export_seconds = time.perf_counter() - export_start
        runtime = StagedRuntime(export_dir, num_threads=1)

        def monolithic_pass():
            for image in images:
                runtime.predict_monolithic(image[None])

        monolithic_pass()  # load and warm up
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            monolithic_pass()
            times.append(time.perf_counter() - t0)
        monolithic_ms = 1000 * float(np.median(times)) / len(images)
        rows = []
        for row in budgets:
            if not row.get("reachable"):
                continue
            runtime.thresholds = row["thresholds"]
            staged_ms = runtime.latency(images, repeats=repeats)
            out = runtime.predict(images)
            rows.append(
                {
                    "budget": row["budget"],
                    "staged_ms": round(staged_ms, 4),
                    "ratio_to_monolithic": round(staged_ms / monolithic_ms, 4),
                    "flops_fraction": float(out["flops"].mean() / ee.full_model_flops),
                }
            )
    return {
        "images": int(len(images)),
        "threads": 1,
        "repeats": repeats,
        "export_seconds": round(export_seconds, 1),
        "monolithic_ms": round(monolithic_ms, 4),
        "budgets": rows,
    }
