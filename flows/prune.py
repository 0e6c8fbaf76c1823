"""The pruning flow: prepare, evaluate the baseline, prune-train, strip, check, measure, report.

Each stage stores its output in the artifact store under a key derived from its inputs'
contents and its parameters, and Prefect caches it under that key: a re-run (the next night's,
or one started from the UI) runs only the stages whose inputs changed.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

from prefect import Task, flow, get_run_logger
from prefect.runtime import deployment, flow_run
from prefect.tasks import exponential_backoff

from tasks.config import RunConfig
from tasks.dataset import prepare_dataset
from tasks.evaluate import baseline_key, evaluate_baseline, evaluate_pruned, pruned_key
from tasks.files import storage_errors
from tasks.inputs import check_inputs
from tasks.prune import prune_train, strip, strip_key, train_key
from tasks.report import RunSummary, publish_report
from tasks.sanity import sanity_check, sanity_key
from tasks.size import measure_size, size_key
from tasks.store import ArtifactStore


def new_run_dir(output_root: Path) -> Path:
    """A fresh folder for this run's summary: UTC time, then the flow run's name."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    run_dir = output_root / "runs" / f"{stamp}-{flow_run.name or 'local'}"
    with storage_errors(output_root, "the run's folder"):
        run_dir.mkdir(parents=True, exist_ok=False)
    return run_dir


@contextlib.contextmanager
def timed(stage_seconds: dict[str, float], stage: str) -> Iterator[None]:
    started = time.perf_counter()
    yield
    stage_seconds[stage] = round(time.perf_counter() - started, 3)


def run_stage(stage: Task, store: ArtifactStore, key: str, **inputs):
    """Run a stage task, bypassing its Prefect cache when the stored artifact is gone or damaged.

    Prefect's cache record only says the stage once completed; the folder is what later stages
    read. A missing folder, or one whose files no longer match their digests, makes the stage
    run again (and overwrite its cache record) instead of returning a result that points nowhere.
    """
    problem = store.problem(stage.name, key)
    if problem and store.folder(stage.name, key).exists():
        get_run_logger().warning("%s: stored artifact unusable (%s); running the stage again", stage.name, problem)
    elif problem:
        get_run_logger().info("%s: no stored artifact for key %s; the stage will run", stage.name, key)
    task = stage.with_options(refresh_cache=True) if problem else stage
    return task(store=store, key=key, **inputs)


@flow(name="prune")
def prune_flow(config: RunConfig) -> RunSummary:
    """Prune the baseline under the configured schedule and compare it with the baseline."""
    seconds: dict[str, float] = {}
    with timed(seconds, "check_inputs"):
        inputs = check_inputs(config, from_deployment=deployment.id is not None)
    store = ArtifactStore(root=config.output_root / "artifacts")
    run_dir = new_run_dir(config.output_root)
    with timed(seconds, "prepare_dataset"):
        dataset = run_stage(prepare_dataset, store, inputs.dataset_key, config=config.dataset)
    schedule = inputs.schedule
    baseline_path = config.model.baseline
    with timed(seconds, "evaluate_baseline"):
        baseline = run_stage(
            evaluate_baseline, store, baseline_key(inputs.baseline_digest, dataset),
            model_path=baseline_path, dataset=dataset, config=config.dataset,
            trust_custom_code=config.model.trust_custom_code,
        )
    training = prune_train.with_options(
        retries=config.training.retries,
        retry_delay_seconds=exponential_backoff(backoff_factor=config.training.retry_delay_seconds),
    )
    with timed(seconds, "prune_train"):
        trained = run_stage(
            training, store, train_key(config, dataset, schedule), config=config, dataset=dataset, schedule=schedule
        )
    with timed(seconds, "strip"):
        stripped = run_stage(strip, store, strip_key(trained), trained=trained, dataset=dataset, config=config)
    with timed(seconds, "sanity_check"):
        sanity = run_stage(
            sanity_check, store,
            sanity_key(trained, stripped, schedule.final_sparsity, config.sanity_tolerance),
            wrapped_path=trained.wrapped_model, stripped_path=stripped.model,
            expected=schedule.final_sparsity, tolerance=config.sanity_tolerance,
        )
    with timed(seconds, "measure_size"):
        sizes = run_stage(
            measure_size, store, size_key(baseline_path, stripped),
            baseline_path=baseline_path, pruned_path=stripped.model,
        )
    with timed(seconds, "evaluate_pruned"):
        pruned = run_stage(
            evaluate_pruned, store, pruned_key(stripped.digest, dataset),
            model_path=stripped.model, dataset=dataset, config=config.dataset,
        )
    summary = RunSummary(
        run_dir=run_dir, pruned_model=stripped.model, config=config, schedule=schedule,
        classes=dataset.classes, counts=dataset.counts, baseline=baseline, pruned=pruned,
        sanity=sanity, sizes=sizes, training=trained, stage_seconds=seconds,
    )
    publish_report(summary)
    return summary
