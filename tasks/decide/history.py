"""The sweeps' history: one Parquet file per run, read back as one table, and its regressions."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from prefect import task
from prefect.cache_policies import NONE

from pruneflow.tasks.core.files import atomic_path, storage_errors
from pruneflow.tasks.decide.champion import KEPT
from pruneflow.tasks.decide.gate import EPSILON, Candidate, accuracy_drop, candidates, gate_problem
from pruneflow.tasks.libs.outcome import Point, TargetResult
from pruneflow.tasks.specs.config import SweepConfig
from pruneflow.tasks.specs.formats import KERAS

# What counts as a regression by default, for `pruneflow history` and the sweep's event.
REGRESSION_TOLERANCE = 0.5  # accuracy points
LATENCY_TOLERANCE = 0.25  # a fraction: 25 % slower

# A file's figures in a history row: what a failed target's row leaves empty.
FIGURES = (
    "measured_sparsity", "accuracy", "baseline_accuracy", "accuracy_change", "agreement", "raw_bytes", "zip_bytes",
    "zip_ratio", "latency_ms", "latency_p90_ms", "training_seconds", "flops_ratio", "batch_latency_ms",
)


def history_rows(
    results: list[TargetResult], promoted: Candidate | None, gate: SweepConfig, *,
    flow_run_id: str, started: datetime, code_version: str, config_digest: str,
    failures: dict[Point, str] | None = None,
    decision: str = "", why: str = "",
) -> pd.DataFrame:
    """One row per deployable file of each target of this run, and one per target that failed
    (its error, no figures), as appended to the history; `decision` is the run's against the
    champion and `why` its reasons in a few words (pruneflow.tasks.decide.champion.Decision's
    verdict and why)."""
    run = {
        "flow_run_id": flow_run_id, "started": started, "code_version": code_version, "config_digest": config_digest,
        "decision": decision, "decision_why": why,
    }
    rows = [
        {
            **run, "target": result.target, "channel_fraction": result.channel_fraction, "format": file.format,
            "measured_sparsity": result.measured_sparsity, "accuracy": file.accuracy,
            "baseline_accuracy": result.baseline.accuracy, "accuracy_change": -accuracy_drop(result, file),
            "agreement": file.agreement, "raw_bytes": file.raw_bytes, "zip_bytes": file.zip_bytes,
            "zip_ratio": file.zip_ratio, "latency_ms": file.latency_median_ms, "latency_p90_ms": file.latency_p90_ms,
            "machine": result.latency.machine,
            "training_seconds": result.training.seconds, "passed_gate": gate_problem(result, file, gate) is None,
            "flops_ratio": file.flops_ratio, "batch_latency_ms": file.batch_median_ms,
            "promoted": promoted is not None and (result.point, file.format) == (promoted[0].point, promoted[1].format),
            "failed": False, "error": "",
        }
        for result, file in candidates(results)
    ]
    rows += [
        {**run, "target": point.target, "channel_fraction": point.channels, "format": "",
         **dict.fromkeys(FIGURES, float("nan")), "machine": "", "passed_gate": False, "promoted": False, "failed": True,
         "error": error}
        for point, error in sorted((failures or {}).items())
    ]
    return pd.DataFrame(rows)


def append_history(folder: Path, rows: pd.DataFrame) -> Path:
    """Add this run's rows to the Parquet dataset in `folder`, as a file of their own.

    One file per run, written under a temporary name and renamed: concurrent runs never write
    the same file, and a reader never sees a half-written one.
    """
    stamp = rows["started"].iloc[0].strftime("%Y%m%dT%H%M%S")
    target = folder / f"{stamp}-{rows['flow_run_id'].iloc[0]}.parquet"
    with atomic_path(target) as tmp:
        pq.write_table(pa.Table.from_pandas(rows, preserve_index=False), tmp)
    return target


# Columns that rows written by earlier versions lack (no `format` column: the Keras .h5's rows).
DEFAULTS = {
    "format": KERAS, "latency_ms": float("nan"), "raw_bytes": float("nan"), "machine": "", "failed": False, "error": "",
    "decision": "", "decision_why": "", "channel_fraction": 0.0,
}


def with_defaults(rows: pd.DataFrame) -> pd.DataFrame:
    """`rows` with every column of DEFAULTS, missing values filled."""
    rows = rows.copy()
    for column, default in DEFAULTS.items():
        rows[column] = rows[column].fillna(default) if column in rows else default
    return rows


def read_history(folder: Path) -> pd.DataFrame:
    """Every run's rows, oldest first; empty when there is no history yet.

    A flow run retried after a failure appends again: only its latest rows count. Rows written
    before files were exported (no `format` column) are the Keras .h5's.
    """
    # Not the hidden files: those are being written.
    files = sorted(path for path in folder.glob("*.parquet") if not path.name.startswith(".")) if folder.is_dir() else []
    if not files:
        return pd.DataFrame()
    rows = pd.concat([pq.read_table(path).to_pandas() for path in files], ignore_index=True)
    rows = with_defaults(rows)
    latest = rows.groupby("flow_run_id")["started"].transform("max")
    return rows[rows["started"] == latest].sort_values(
        ["started", "channel_fraction", "target"], ignore_index=True, kind="stable"
    )


def runs_summary(history: pd.DataFrame) -> pd.DataFrame:
    """One row per run, oldest first: its targets, how many failed (and the first error), its
    promoted file's figures (NaN where nothing was promoted)."""
    history = with_defaults(history)
    history = history.assign(point=list(zip(history["target"], history["channel_fraction"])))
    runs = history.groupby("flow_run_id", sort=False).agg(
        started=("started", "first"), config_digest=("config_digest", "first"),
        targets=("point", "nunique"), failed=("failed", "sum"), decision=("decision", "first"),
        decision_why=("decision_why", "first"),
    ).reset_index()
    failed = history[history["failed"]]
    errors = failed.groupby("flow_run_id")["error"].first().rename("first_error")
    runs = runs.merge(errors, on="flow_run_id", how="left")
    promoted = history[history["promoted"]][
        ["flow_run_id", "target", "channel_fraction", "format", "accuracy", "zip_bytes", "latency_ms", "machine"]
    ]
    return runs.merge(promoted, on="flow_run_id", how="left").sort_values("started", ignore_index=True)


def regressions(
    runs: pd.DataFrame, tolerance: float = REGRESSION_TOLERANCE, latency_tolerance: float = LATENCY_TOLERANCE
) -> dict[str, str]:
    """flow run id -> what regressed against the last earlier run of the same config (its
    `sweep` section aside) that promoted a file: the promoted file's accuracy down by more
    than `tolerance` points, its size up, its latency up by more than `latency_tolerance`
    (a fraction: 0.25 is 25 % slower; compared only between runs on the same kind of machine),
    or no file promoted any more; and any run where targets failed."""
    found, last_promoted = {}, {}
    for current in runs.itertuples():
        previous = last_promoted.get(current.config_digest)
        if not pd.isna(current.accuracy):
            last_promoted[current.config_digest] = current
        if current.failed:  # a run with failed targets is incomplete, whatever it promoted
            found[current.flow_run_id] = (
                f"{int(current.failed)} of {current.targets} targets failed (first: {current.first_error})"
            )
            continue
        if previous is None or current.decision == KEPT:  # the champion still serves: nothing changed
            continue
        if pd.isna(current.accuracy):
            found[current.flow_run_id] = "no model passed the gate (the run before promoted one)"
            continue
        drop = 100.0 * (previous.accuracy - current.accuracy)
        problems = []
        if drop > tolerance + EPSILON:  # a drop exactly at the tolerance is within it
            problems.append(f"accuracy {current.accuracy:.4f}, down {drop:.2f} points from {previous.accuracy:.4f}")
        if current.zip_bytes > previous.zip_bytes:
            problems.append(f"size {int(current.zip_bytes):,} B zipped, up from {int(previous.zip_bytes):,} B")
        # Latency is noisy and depends on the machine: only a slow-down beyond the tolerance, on
        # the same kind of machine, counts (and only where both were measured).
        same_machine = bool(current.machine) and current.machine == previous.machine
        if same_machine and current.latency_ms > previous.latency_ms * (1 + latency_tolerance) + EPSILON:
            problems.append(
                f"latency {current.latency_ms:.3f} ms, up {current.latency_ms / previous.latency_ms - 1:.0%} "
                f"from {previous.latency_ms:.3f} ms"
            )
        if problems:
            found[current.flow_run_id] = "; ".join(problems)
    return found


@task(cache_policy=NONE)
def record_history(rows: pd.DataFrame, folder: Path) -> Path:
    """Append this sweep's rows to the history (a full disk or read-only folder is a clear error)."""
    with storage_errors(folder, "the sweep's history"):
        return append_history(folder, rows)
