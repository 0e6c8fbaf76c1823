"""The pruning flow: prepare, evaluate the baseline, prune-train, strip, check, measure, report."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

from prefect import flow
from prefect.runtime import flow_run

from tasks.config import RunConfig
from tasks.dataset import prepare_dataset
from tasks.evaluate import evaluate_baseline, evaluate_pruned
from tasks.prune import prune_train, strip
from tasks.report import RunSummary, publish_report
from tasks.sanity import sanity_check
from tasks.schedule import resolve_schedule
from tasks.size import measure_size


def new_run_dir(output_root: Path) -> Path:
    """A fresh folder for this run's outputs: UTC time, then the flow run's name."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    run_dir = output_root / "runs" / f"{stamp}-{flow_run.name or 'local'}"
    run_dir.mkdir(parents=True, exist_ok=False)
    return run_dir


@contextlib.contextmanager
def timed(stage_seconds: dict[str, float], stage: str) -> Iterator[None]:
    started = time.perf_counter()
    yield
    stage_seconds[stage] = round(time.perf_counter() - started, 3)


@flow(name="prune")
def prune_flow(config: RunConfig) -> RunSummary:
    """Prune the baseline under the configured schedule and compare it with the baseline."""
    run_dir = new_run_dir(config.output_root)
    seconds: dict[str, float] = {}
    with timed(seconds, "prepare_dataset"):
        dataset = prepare_dataset(config.dataset, run_dir / "dataset")
    schedule = resolve_schedule(
        config.pruning, config.steps_per_epoch(dataset.counts["train"]), config.training.epochs
    )
    with timed(seconds, "evaluate_baseline"):
        baseline = evaluate_baseline(config.model.baseline, dataset, config.dataset)
    with timed(seconds, "prune_train"):
        trained = prune_train(config, dataset, schedule, run_dir / "prune")
    with timed(seconds, "strip"):
        stripped = strip(trained, dataset, config, run_dir / "pruned.h5")
    with timed(seconds, "sanity_check"):
        sanity = sanity_check(
            trained.wrapped_model, stripped.model, schedule.final_sparsity,
            config.sanity_tolerance, run_dir / "sanity.json",
        )
    with timed(seconds, "measure_size"):
        sizes = measure_size(config.model.baseline, stripped.model, run_dir / "size")
    with timed(seconds, "evaluate_pruned"):
        pruned = evaluate_pruned(stripped.model, dataset, config.dataset)
    summary = RunSummary(
        run_dir=run_dir, pruned_model=stripped.model, config=config, schedule=schedule,
        classes=dataset.classes, counts=dataset.counts, baseline=baseline, pruned=pruned,
        sanity=sanity, sizes=sizes, training_seconds=trained.seconds, stage_seconds=seconds,
    )
    publish_report(summary)
    return summary
