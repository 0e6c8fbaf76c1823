"""A sweep's pieces: one schedule per target, the accuracy gate, promotion, and the run history.

The sweep flow (flows/sweep.py) prunes one baseline to every target sparsity; this module
decides which result passes the gate, copies the smallest passing model to `promoted/`, and
appends one row per target to the Parquet history under the output root.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from tasks.config import ConstantSchedule, RunConfig, Schedule, SweepConfig
from tasks.files import write_json
from tasks.report import PruningOutcome

PROMOTED = "promoted"
HISTORY = "history"


def at_target(schedule: Schedule, target: float) -> Schedule:
    """The run's schedule aimed at `target`: same steps and shape, another final sparsity."""
    if isinstance(schedule, ConstantSchedule):
        return schedule.model_copy(update={"target_sparsity": target})
    return schedule.model_copy(
        update={"final_sparsity": target, "initial_sparsity": min(schedule.initial_sparsity, target)}
    )


class TargetResult(PruningOutcome):
    """What pruning to one target gave, against the baseline."""

    target: float

    def gate_problem(self, gate: SweepConfig) -> str | None:
        """Why this result may not be promoted, or None when it passes the gate."""
        if self.target < gate.min_sparsity - 1e-9:
            return f"sparsity {self.target} is below min_sparsity {gate.min_sparsity}"
        if -self.accuracy_change > gate.max_accuracy_drop + 1e-9:
            return f"accuracy dropped {-self.accuracy_change:.2f} points (max_accuracy_drop {gate.max_accuracy_drop})"
        return None

    def row(self, gate: SweepConfig) -> dict:
        """One line of the sweep's table, formatted for people."""
        problem = self.gate_problem(gate)
        return {
            "target": f"{self.target:.2f}",
            "measured sparsity": f"{self.measured_sparsity:.4f}",
            "test accuracy": f"{self.pruned.accuracy:.4f}",
            "change": f"{self.accuracy_change:+.2f} points",
            "zip-deflated (bytes)": f"{self.sizes.pruned.zip_bytes:,}",
            "vs baseline": f"{self.sizes.zip_ratio:.2f}x smaller",
            "training (s)": f"{self.training.seconds:.1f}",
            "gate": "pass" if problem is None else f"fail: {problem}",
        }


def choose(results: list[TargetResult], gate: SweepConfig) -> TargetResult | None:
    """The smallest model (zip-deflated) among those that pass the gate; None if none does."""
    passing = [result for result in results if result.gate_problem(gate) is None]
    return min(passing, key=lambda result: (result.sizes.pruned.zip_bytes, -result.target), default=None)


def best_candidate(results: list[TargetResult]) -> TargetResult | None:
    """The most accurate result, then the smallest: what to report when nothing passes."""
    return min(results, key=lambda result: (-result.pruned.accuracy, result.sizes.pruned.zip_bytes), default=None)


def promote(result: TargetResult, config: RunConfig, flow_run_id: str, output_root: Path) -> Path:
    """Make `result` the promoted model: `output_root/promoted/` holds its model, config and figures.

    `promoted` is a symlink to a version folder under `promoted-versions/`, written first and
    switched to by one atomic rename of the link: a reader or a crash sees the previous promoted
    model or the new one, whole. Sweeps promoting at once take turns on a lock.
    """
    from filelock import FileLock

    versions = output_root / f"{PROMOTED}-versions"
    versions.mkdir(parents=True, exist_ok=True)
    with FileLock(output_root / f".{PROMOTED}.lock"):
        version = versions / f"{datetime.now(timezone.utc):%Y%m%dT%H%M%S}-{flow_run_id}-{uuid.uuid4().hex[:6]}"
        tmp = versions / f".tmp-{version.name}"
        tmp.mkdir()
        shutil.copy2(result.pruned_model, tmp / "model.h5")
        write_json(tmp / "config.json", config.model_copy(update={"pruning": result.schedule}).model_dump(mode="json"))
        write_json(tmp / "metrics.json", {
            "flow_run_id": flow_run_id,
            "promoted_at": datetime.now().astimezone().isoformat(timespec="seconds"),
            "source": str(result.pruned_model),
            **json.loads(result.model_dump_json(include={"target", "measured_sparsity", "accuracy_change"})),
            "accuracy": result.pruned.accuracy,
            "baseline_accuracy": result.baseline.accuracy,
            "zip_bytes": result.sizes.pruned.zip_bytes,
            "zip_ratio": result.sizes.zip_ratio,
        })
        os.replace(tmp, version)
        link, new_link = output_root / PROMOTED, output_root / f".{PROMOTED}-link-{uuid.uuid4().hex[:6]}"
        new_link.symlink_to(version.relative_to(output_root), target_is_directory=True)
        os.replace(new_link, link)
        for old in versions.iterdir():  # earlier versions, and what a crash left behind
            if old != version:
                shutil.rmtree(old, ignore_errors=True)
    return link


def history_rows(
    results: list[TargetResult], promoted: TargetResult | None, gate: SweepConfig, *,
    flow_run_id: str, started: datetime, code_version: str, config_digest: str,
) -> pd.DataFrame:
    """One row per target of this run, as appended to the history."""
    return pd.DataFrame([
        {
            "flow_run_id": flow_run_id, "started": started, "code_version": code_version,
            "config_digest": config_digest, "target": result.target,
            "measured_sparsity": result.measured_sparsity, "accuracy": result.pruned.accuracy,
            "baseline_accuracy": result.baseline.accuracy, "accuracy_change": result.accuracy_change,
            "zip_bytes": result.sizes.pruned.zip_bytes, "zip_ratio": result.sizes.zip_ratio,
            "training_seconds": result.training.seconds, "passed_gate": result.gate_problem(gate) is None,
            "promoted": promoted is not None and result.target == promoted.target,
        }
        for result in results
    ])


def append_history(output_root: Path, rows: pd.DataFrame) -> Path:
    """Add this run's rows to the Parquet dataset `output_root/history/` (one file per run).

    One file per run, written under a temporary name and renamed: concurrent runs never write
    the same file, and a reader never sees a half-written one.
    """
    folder = output_root / HISTORY
    folder.mkdir(parents=True, exist_ok=True)
    stamp = rows["started"].iloc[0].strftime("%Y%m%dT%H%M%S")
    target = folder / f"{stamp}-{rows['flow_run_id'].iloc[0]}.parquet"
    tmp = folder / f".{target.name}.tmp"
    pq.write_table(pa.Table.from_pandas(rows, preserve_index=False), tmp)
    os.replace(tmp, target)
    return target


def read_history(output_root: Path) -> pd.DataFrame:
    """Every run's rows, oldest first; empty when there is no history yet."""
    folder = output_root / HISTORY
    files = sorted(folder.glob("*.parquet")) if folder.is_dir() else []
    if not files:
        return pd.DataFrame()
    rows = pq.ParquetDataset([str(path) for path in files]).read().to_pandas()
    # A flow run retried after a failure appends again: keep its latest rows.
    latest = rows.groupby("flow_run_id")["started"].transform("max")
    return rows[rows["started"] == latest].sort_values(["started", "target"], ignore_index=True)


def runs_summary(history: pd.DataFrame) -> pd.DataFrame:
    """One row per run, oldest first: its promoted model's figures (NaN where nothing was promoted)."""
    runs = history.groupby("flow_run_id", sort=False).agg(
        started=("started", "first"), config_digest=("config_digest", "first")
    ).reset_index()
    promoted = history[history["promoted"]][["flow_run_id", "target", "accuracy", "zip_bytes"]]
    return runs.merge(promoted, on="flow_run_id", how="left").sort_values("started", ignore_index=True)


def regressions(runs: pd.DataFrame, tolerance: float) -> dict[str, str]:
    """flow run id -> what regressed against the last earlier run of the same config (its
    `sweep` section aside) that promoted a model: the promoted model's accuracy down by more
    than `tolerance` points, or its size up, or no model promoted any more."""
    found, last_promoted = {}, {}
    for current in runs.itertuples():
        previous = last_promoted.get(current.config_digest)
        if not pd.isna(current.accuracy):
            last_promoted[current.config_digest] = current
        if previous is None:
            continue
        if pd.isna(current.accuracy):
            found[current.flow_run_id] = "no model passed the gate (the run before promoted one)"
            continue
        drop = 100.0 * (previous.accuracy - current.accuracy)
        problems = []
        if drop > tolerance:
            problems.append(f"accuracy {current.accuracy:.4f}, down {drop:.2f} points from {previous.accuracy:.4f}")
        if current.zip_bytes > previous.zip_bytes:
            problems.append(f"size {int(current.zip_bytes):,} B zipped, up from {int(previous.zip_bytes):,} B")
        if problems:
            found[current.flow_run_id] = "; ".join(problems)
    return found


def plot_sweep(results: list[TargetResult], gate: SweepConfig, path: Path) -> Path:
    """Accuracy against zip-deflated size, one point per target, the baseline and the gate drawn."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on a worker
    from matplotlib import pyplot as plt

    from tasks.files import atomic_path

    baseline, sizes = results[0].baseline, results[0].sizes
    figure, axes = plt.subplots(figsize=(7, 4.5), dpi=120)
    try:
        kb = [r.sizes.pruned.zip_bytes / 1024 for r in results]
        accuracy = [100 * r.pruned.accuracy for r in results]
        passed = [r.gate_problem(gate) is None for r in results]
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
