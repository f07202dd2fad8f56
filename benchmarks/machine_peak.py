"""This machine's matrix-multiply peak, measured, and how close a LiteRT
bundle's graphs run to it (``litert_latency.py``).

float32: numpy's BLAS (OpenBLAS here), its threads pinned with threadpoolctl.
int8: ``torch._int_mm`` (int8 x int8 -> int32, oneDNN on x86: the VNNI
dot-product path where the CPU has it), its threads set with
``torch.set_num_threads``; absent without torch. One multiply-add counts
2 operations, as keras_dmpo's FLOPs counter does.

    .venv/bin/python benchmarks/machine_peak.py      # prints the peaks as JSON
"""

import json
import time

import numpy as np

SIZE = 2048
# A stage below this fraction of the median stage's achieved GFLOP/s is flagged.
SLOW_STAGE_FRACTION = 0.8


def best_seconds(fn, repeats):
    """The fastest of ``repeats`` calls of ``fn`` (after one warm-up call), in s."""
    fn()  # warm-up: thread pools, page faults
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def float32_peak(num_threads, size=SIZE, repeats=5):
    """GFLOP/s of a ``size``² float32 matmul on ``num_threads`` BLAS threads."""
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, size), dtype=np.float32)
    b = rng.standard_normal((size, size), dtype=np.float32)
    with threadpool_limits(limits=num_threads, user_api="blas"):
        seconds = best_seconds(lambda: a @ b, repeats)
    return 2 * size**3 / seconds / 1e9


def int8_peak(num_threads, size=SIZE, repeats=5):
    """GOP/s of a ``size``² int8 matmul (int32 accumulators) on
    ``num_threads`` torch threads, or None where torch is not installed."""
    try:
        import torch
    except ImportError:
        return None
    previous = torch.get_num_threads()
    torch.set_num_threads(num_threads)
    try:
        generator = torch.Generator().manual_seed(0)
        a = torch.randint(-128, 128, (size, size), dtype=torch.int8, generator=generator)
        b = torch.randint(-128, 128, (size, size), dtype=torch.int8, generator=generator)
        seconds = best_seconds(lambda: torch._int_mm(a, b), repeats)
    finally:
        torch.set_num_threads(previous)
    return 2 * size**3 / seconds / 1e9


def machine_peaks(threads=(1, 2)):
    """``{"float32": {threads: GFLOP/s}, "int8": {threads: GOP/s or None}, ...}``."""
    return {
        "matmul_size": SIZE,
        "float32_library": "numpy BLAS (threadpoolctl-limited)",
        "int8_library": "torch._int_mm",
        "float32": {str(t): float32_peak(t) for t in threads},
        "int8": {str(t): int8_peak(t) for t in threads},
    }


def achieved_table(directory, quantization, peaks, num_threads, repeats=100):
    """Each graph's achieved GFLOP/s (its FLOPs over its isolated batch-1
    invoke time) against this machine's measured matmul peak; stages under
    ``SLOW_STAGE_FRACTION`` of the median stage's rate are flagged."""
    from keras_dmpo.litert import StagedRuntime

    runtime = StagedRuntime(directory, num_threads=num_threads)
    stage_ms = runtime.stage_latency(batch_size=1, repeats=repeats, warmup=10)
    stage_flops = np.diff(np.concatenate([[0.0], runtime.flops_per_exit]))
    mono_ms = stage_ms["monolithic"]
    float_peak = peaks["float32"][str(num_threads)]
    int8_peak = peaks["int8"][str(num_threads)]
    stages = []
    for k, flops in enumerate(stage_flops):
        ms = stage_ms[f"stage_{k + 1}"]
        stages.append({"stage": k + 1, "gflop": flops / 1e9, "ms": ms, "gflops_per_s": flops / ms / 1e6})
    median = float(np.median([row["gflops_per_s"] for row in stages]))
    for row in stages:
        row["fraction_of_median_stage"] = row["gflops_per_s"] / median
        row["slow"] = bool(row["fraction_of_median_stage"] < SLOW_STAGE_FRACTION)
        row["fraction_of_float32_peak"] = row["gflops_per_s"] / float_peak
    mono_rate = runtime.full_model_flops / mono_ms / 1e6
    return {
        "quantization": quantization or "float32",
        "num_threads": num_threads,
        "monolithic_ms": mono_ms,
        "monolithic_gflops_per_s": mono_rate,
        "monolithic_fraction_of_float32_peak": mono_rate / float_peak,
        "monolithic_fraction_of_int8_peak": None if int8_peak is None else mono_rate / int8_peak,
        "median_stage_gflops_per_s": median,
        "stages": stages,
    }


if __name__ == "__main__":
    print(json.dumps(machine_peaks(), indent=2))
