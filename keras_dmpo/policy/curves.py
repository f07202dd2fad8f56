"""Accuracy-FLOPs curves of an early-exit model: a table and a plot."""

import dataclasses
import json

from keras_dmpo.optional_deps import require


@dataclasses.dataclass
class AccuracyFlopsCurve:
    """Test accuracy against the FLOPs fraction, for a sweep of budgets.

    Attributes:
        rows: one dict per reachable budget: ``budget``, ``thresholds``,
            ``validation_accuracy``, ``validation_fraction``,
            ``test_accuracy``, ``test_fraction``, ``exit_fractions``, and
            ``policy`` (``ExitPolicy.to_dict``, with its calibration record:
            ``ee.policy = row["policy"]`` adopts it).
        single_exits: each exit used alone: ``exit`` (block), ``fraction``,
            ``test_accuracy``. The last one is the full model (fraction ~1).
        criterion: the exit score used.
    """

    rows: list
    single_exits: list
    criterion: str = "confidence"

    def to_dict(self):
        return dataclasses.asdict(self)

    def save_json(self, path):
        with open(path, "w") as handle:
            json.dump(self.to_dict(), handle, indent=2)

    def table(self):
        """Markdown table: budget, FLOPs reached, accuracies."""
        lines = ["| budget | test FLOPs | test accuracy | validation accuracy |", "|---|---|---|---|"]
        for row in self.rows:
            lines.append(
                f"| {row['budget']:.0%} | {row['test_fraction']:.1%} | "
                f"{100 * row['test_accuracy']:.2f} | {100 * row['validation_accuracy']:.2f} |"
            )
        lines += ["", "| exit alone (block) | FLOPs | test accuracy |", "|---|---|---|"]
        for single in self.single_exits:
            lines.append(
                f"| {single['exit']} | {single['fraction']:.1%} | {100 * single['test_accuracy']:.2f} |"
            )
        return "\n".join(lines)

    def plot(self, path, title="Early exit: accuracy vs FLOPs", label="early exit (calibrated)"):
        """Save a PNG: the calibrated curve, each exit alone, and the full model."""
        matplotlib = require("matplotlib", "plot", "AccuracyFlopsCurve.plot")
        matplotlib.use("Agg")  # files only: no display needed
        plt = require("matplotlib.pyplot", "plot", "AccuracyFlopsCurve.plot")

        fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
        xs = [100 * r["test_fraction"] for r in self.rows]
        ys = [100 * r["test_accuracy"] for r in self.rows]
        ax.plot(xs, ys, "o-", label=label)
        sx = [100 * s["fraction"] for s in self.single_exits]
        sy = [100 * s["test_accuracy"] for s in self.single_exits]
        ax.plot(sx, sy, "s--", color="gray", alpha=0.8, label="each exit alone")
        for s, x, y in zip(self.single_exits, sx, sy):
            ax.annotate(f"{s['exit']}", (x, y), textcoords="offset points", xytext=(3, -10), fontsize=7)
        if self.single_exits:
            ax.axhline(sy[-1], color="black", lw=0.8, ls=":", label="last exit (full model)")
        ax.set_xlabel("FLOPs (% of the full model)")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best")
        fig.tight_layout()
        fig.savefig(path)
        plt.close(fig)
        return path
