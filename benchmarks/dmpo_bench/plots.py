"""Accuracy against FLOPs, one plot per data set (mean ± std over seeds)."""

from dmpo_bench.profiles import METHODS


def plot_dataset(methods, path, dataset, quick=False):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for method in [m for m in METHODS if m in methods]:
        s = methods[method]
        pts = [
            (b["fraction"][0], b["fraction"][1] or 0.0, b["accuracy"][0], b["accuracy"][1] or 0.0)
            for budget, b in sorted(s["budgets"].items())
            if b["n"]
        ]
        if not pts:
            continue
        xs, xerr, ys, yerr = zip(*pts)
        style = (
            dict(marker="*", markersize=12, linestyle="none") if method == "single_exit" else dict(marker="o")
        )
        ax.errorbar(xs, ys, yerr=yerr, xerr=xerr, capsize=3, label=method, **style)
    ax.set_xlabel("test FLOPs (% of the full model)")
    ax.set_ylabel("test accuracy (%)")
    title = f"{dataset}: accuracy vs FLOPs (mean ± std over seeds)"
    ax.set_title(("SMOKE TEST — " if quick else "") + title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
