"""The plots: a sweep's accuracy against compressed size and against latency (one point per file of
each target, one series per format), the sensitivity heatmap (layers against sparsities), and
the int8 error by layer."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from pruneflow.tasks.core.files import atomic_path
from pruneflow.tasks.decide.gate import candidates, gate_problem, pareto_front
from pruneflow.tasks.libs.artifacts import LayerSensitivity, QuantizationErrors
from pruneflow.tasks.libs.outcome import TargetResult
from pruneflow.tasks.libs.sensitivity import Proposal
from pruneflow.tasks.specs.config import SweepConfig
from pruneflow.tasks.specs.formats import KERAS, display_name

MARKERS = "osD^vP*X"


@contextlib.contextmanager
def png_figure(path: Path, figsize: tuple[float, float], ncols: int = 1) -> Iterator[tuple[object, object]]:
    """(figure, axes) to draw on (an array of `ncols` axes when more than one); written to `path`
    as a PNG (whole or not at all) when the block ends, and closed either way."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on a worker
    from matplotlib import pyplot as plt

    figure, axes = plt.subplots(ncols=ncols, figsize=figsize, dpi=120)
    try:
        yield figure, axes
        figure.tight_layout()
        with atomic_path(path) as tmp:
            figure.savefig(tmp, format="png")
    finally:
        plt.close(figure)


def plot_sweep(results: list[TargetResult], gate: SweepConfig, path: Path) -> Path:
    """Accuracy against zip-deflated size (left) and against batch-1 latency (right), one series
    per format (filled: passes the gate; hollow: fails it), each point labelled with its target
    (and the fraction of channels removed, where any); the baseline .h5, the gate and (left) the
    Pareto front drawn."""
    from matplotlib import colormaps
    from matplotlib.ticker import FuncFormatter

    baseline, sizes = results[0].baseline, results[0].sizes
    baseline_ms = results[0].latency.of("baseline", KERAS).median_ms
    panels = (
        ("zip_bytes", 1 / 1024, "file size, zip-deflated (KiB, log scale)", sizes.baseline.zip_bytes / 1024),
        ("latency_median_ms", 1.0, "latency at batch 1 (ms, log scale; each file in its runtime)", baseline_ms),
    )
    with png_figure(path, (13, 5), ncols=2) as (_, both):
        formats = list(dict.fromkeys(file.format for _, file in candidates(results)))
        for axes, (field, scale, label, baseline_x) in zip(both, panels):
            for n, fmt in enumerate(formats):
                points = [(r, f) for r, f in candidates(results) if f.format == fmt]
                color = colormaps["tab10"](n)
                x = [getattr(f, field) * scale for _, f in points]
                accuracy = [100 * f.accuracy for _, f in points]
                passed = [gate_problem(r, f, gate) is None for r, f in points]
                axes.scatter(x, accuracy, marker=MARKERS[n % len(MARKERS)], s=40, zorder=3, label=display_name(fmt),
                             facecolors=[color if p else "none" for p in passed], edgecolors=[color] * len(points))
                for value, a, (r, _) in zip(x, accuracy, points):
                    tag = f"{r.target:.2f}" + (f"/c{r.channel_fraction:g}" if r.channel_fraction else "")
                    axes.annotate(tag, (value, a), textcoords="offset points", xytext=(4, 4), fontsize=7)
            axes.scatter([baseline_x], [100 * baseline.accuracy], color="black", marker="*", s=120,
                         label="baseline .h5", zorder=3)
            if field == "zip_bytes":
                front = pareto_front(results)
                axes.step([f.zip_bytes * scale for _, f in front], [100 * f.accuracy for _, f in front], where="post",
                          color="black", linewidth=0.8, alpha=0.6, label="Pareto front", zorder=2)
            axes.axhline(100 * baseline.accuracy - gate.max_accuracy_drop, color="tab:gray", linestyle="--",
                         label=f"gate: at most {gate.max_accuracy_drop:g} points below the baseline")
            axes.set_xscale("log")
            plain = FuncFormatter(lambda value, _: f"{value:g}")
            axes.xaxis.set_major_formatter(plain)
            axes.xaxis.set_minor_formatter(plain)
            axes.tick_params(axis="x", which="minor", labelsize=7)
            axes.set_xlabel(label)
            axes.set_ylabel("test accuracy of the file (%)")
            axes.grid(alpha=0.3, which="both")
        both[0].set_title("Sweep: accuracy against compressed size (hollow: fails the gate)", fontsize=9)
        both[1].set_title("Accuracy against latency (c: fraction of channels removed)", fontsize=9)
        both[0].legend(fontsize=7)
    return path


def plot_sensitivity(results: list[LayerSensitivity], proposal: Proposal, path: Path) -> Path:
    """A heatmap of validation accuracy lost (points) with each layer pruned alone to each
    sparsity, the value in each cell, the proposed sparsity at the end of each row."""
    sparsities = results[0].sparsities
    drops = np.array([r.drops() for r in results])
    with png_figure(path, (2.0 + 1.0 * len(sparsities), 1.5 + 0.32 * len(results))) as (figure, axes):
        bound = max(1.0, float(np.abs(drops).max()))
        image = axes.imshow(drops, cmap="RdYlGn_r", vmin=-bound, vmax=bound, aspect="auto")
        for (row, column), drop in np.ndenumerate(drops):
            axes.text(column, row, f"{drop:+.1f}", ha="center", va="center", fontsize=7)
        axes.set_xticks(range(len(sparsities)), [f"{s:g}" for s in sparsities])
        axes.set_yticks(range(len(results)), [f"{r.layer}  -> {proposal.sparsity[r.layer]:g}" for r in results], fontsize=7)
        axes.set_xlabel("sparsity of the layer alone (no fine-tuning)")
        axes.set_title(f"Validation accuracy lost, in points (-> proposed for {proposal.target:g} overall)", fontsize=9)
        figure.colorbar(image, ax=axes, label="accuracy drop (points)")
    return path


def plot_layer_errors(errors: QuantizationErrors, path: Path) -> Path:
    """Each quantized op's int8 error, worst at the top: RMSE over the float output's spread (bars,
    log scale) and, beside it, 1 - cosine similarity."""
    layers = errors.layers
    with png_figure(path, (12, 1.5 + 0.28 * len(layers)), ncols=2) as (_, (rmse, angle)):
        labels = [f"{e.layer} ({e.op})" for e in layers]
        rows = np.arange(len(layers))
        rmse.barh(rows, [max(e.rmse, 1e-9) for e in layers], color="tab:red")
        rmse.set_xscale("log")
        rmse.set_yticks(rows, labels, fontsize=8)
        rmse.invert_yaxis()
        rmse.set_xlabel("RMSE / spread of the float output (log scale)")
        angle.barh(rows, [max(1 - e.cosine, 1e-12) for e in layers], color="tab:blue")
        angle.set_xscale("log")
        angle.set_yticks(rows, [""] * len(layers))
        angle.invert_yaxis()
        angle.set_xlabel("1 - cosine similarity (log scale)")
        rmse.set_title(f"int8 error by layer, {errors.images} validation images", loc="left")
    return path
