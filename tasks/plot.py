"""The sweep's plot: accuracy against compressed size, one point per target."""

from __future__ import annotations

from pathlib import Path

from tasks.config import SweepConfig
from tasks.files import atomic_path
from tasks.gate import gate_problem
from tasks.outcome import TargetResult


def plot_sweep(results: list[TargetResult], gate: SweepConfig, path: Path) -> Path:
    """Accuracy against zip-deflated size, one point per target, the baseline and the gate drawn."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on a worker
    from matplotlib import pyplot as plt

    baseline, sizes = results[0].baseline, results[0].sizes
    figure, axes = plt.subplots(figsize=(7, 4.5), dpi=120)
    try:
        kb = [r.sizes.pruned.zip_bytes / 1024 for r in results]
        accuracy = [100 * r.pruned.accuracy for r in results]
        passed = [gate_problem(r, gate) is None for r in results]
        axes.scatter([k for k, p in zip(kb, passed) if p], [a for a, p in zip(accuracy, passed) if p],
                     color="tab:green", label="passes the gate", zorder=3)
        axes.scatter([k for k, p in zip(kb, passed) if not p], [a for a, p in zip(accuracy, passed) if not p],
                     color="tab:red", marker="x", label="fails the gate", zorder=3)
        for k, a, r in zip(kb, accuracy, results):
            axes.annotate(f"{r.target:.2f}", (k, a), textcoords="offset points", xytext=(5, 5), fontsize=8)
        axes.scatter([sizes.baseline.zip_bytes / 1024], [100 * baseline.accuracy], color="black", marker="*", s=120,
                     label="baseline", zorder=3)
        axes.axhline(100 * baseline.accuracy - gate.max_accuracy_drop, color="tab:gray", linestyle="--",
                     label=f"gate: at most {gate.max_accuracy_drop:g} points below the baseline")
        axes.set_xlabel("model size, zip-deflated (KiB)")
        axes.set_ylabel("test accuracy (%)")
        axes.set_title("Sparsity sweep: accuracy against compressed size")
        axes.grid(alpha=0.3)
        axes.legend(fontsize=8)
        figure.tight_layout()
        with atomic_path(path) as tmp:
            figure.savefig(tmp, format="png")
    finally:
        plt.close(figure)
    return path
