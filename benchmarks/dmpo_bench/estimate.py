"""How long the full benchmark would take, from the quick runs' timings."""

import os

# Per run beyond training and evaluation: model build and data loading; with
# --latency, the export (a TensorFlow subprocess on JAX) and LiteRT timing.
SETUP_SECONDS = 15.0
LATENCY_SECONDS = 90.0


def estimate_full_run(records, profile, seeds=3, latency=False, idle_cores=None):
    """``(total seconds, {dataset: seconds})`` for the profile's full run,
    from the quick runs' per-image times; None without records. Methods not
    in the quick run borrow dmpo's (same architecture or lighter).

    Default: the measured wall times (as loaded as the machine was then).
    ``idle_cores=n``: an idle-machine estimate, training time = the measured
    CPU time per image / n (all n cores busy with this one process); records
    without CPU time fall back to their wall time."""
    per_method = {}
    for r in records:
        t = r["timing"]
        train = t.get("steady_train_ms_per_image") or t["train_ms_per_image"]
        if idle_cores and t.get("steady_train_cpu_ms_per_image"):
            scale = t["steady_train_cpu_ms_per_image"] / idle_cores / train
            train *= scale
            t = dict(
                t,
                eval_seconds=t["eval_seconds"] * scale,
                first_steps_seconds=t["first_steps_seconds"] * scale,
            )
        per_method.setdefault(r["method"], []).append(
            (train / 1000.0, t["eval_seconds"] / max(1, t["eval_images"]), t["first_steps_seconds"])
        )
    if not per_method:
        return None
    fallback = per_method.get("dmpo") or next(iter(per_method.values()))
    total = 0.0
    detail = {}
    for dataset in profile.datasets:
        full = profile.data[dataset]["full"]
        seconds = 0.0
        for method in profile.methods[dataset]:
            samples = per_method.get(method, fallback)
            train_s, eval_s, overhead = (sum(x[i] for x in samples) / len(samples) for i in range(3))
            one = (
                train_s * profile.train_images[dataset] * full["epochs"]
                + eval_s * profile.eval_images[dataset]
                + overhead
                + SETUP_SECONDS
            )
            if latency:
                one += LATENCY_SECONDS
            seconds += seeds * one
        detail[dataset] = seconds
        total += seconds
    return total, detail


def describe_estimate(estimate, latency=False, label=None):
    """One line for the log."""
    total, detail = estimate
    parts = ", ".join(f"{d} {s / 60:.0f} min" for d, s in detail.items())
    where = label or (
        f"at the quick run's wall-clock speed (load average now {os.getloadavg()[0]:.1f} "
        f"on {os.cpu_count()} cores)"
    )
    return (
        f"estimated full run (defaults, 3 seeds, {'with' if latency else 'no'} --latency) {where}: "
        f"{total / 3600:.1f} h ({parts})"
    )


def estimate_lines(records, profile, latency=False):
    """The log lines after a quick run: at the measured wall-clock speed and
    on idle cores (at most 2, the machines these ran on)."""
    estimate = estimate_full_run(records, profile, latency=latency)
    if not estimate:
        return []
    cores = min(2, os.cpu_count() or 2)
    idle = estimate_full_run(records, profile, latency=latency, idle_cores=cores)
    return [
        describe_estimate(estimate, latency),
        describe_estimate(idle, latency, label=f"on {cores} idle cores (from CPU time / {cores})"),
    ]
