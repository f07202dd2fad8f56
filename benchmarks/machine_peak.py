"""This machine's matrix-multiply peak, measured: the limit a graph's achieved
GFLOP/s is compared with (``litert_latency.py``).

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


def _best_seconds(fn, repeats):
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
        seconds = _best_seconds(lambda: a @ b, repeats)
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
        seconds = _best_seconds(lambda: torch._int_mm(a, b), repeats)
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


if __name__ == "__main__":
    print(json.dumps(machine_peaks(), indent=2))
