"""The sweep flow: one baseline pruned to several target sparsities, the smallest good model promoted.

Inputs are checked, the dataset prepared and the baseline evaluated once (cached like any
run); then every stage from prune-training on runs for all targets as one mapped task, at most
`sweep.max_parallel` at a time. The smallest model within the accuracy gate is copied to
`OUTPUT_ROOT/promoted/`, and every run appends its rows to the Parquet history.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

from prefect import Task, flow, get_run_logger, unmapped
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.runtime import deployment, flow_run
from prefect.task_runners import ThreadPoolTaskRunner
from prefect.tasks import exponential_backoff

from flows.prune import new_run_dir, run_stage
from tasks.config import RunConfig
from tasks.dataset import prepare_dataset
from tasks.errors import PruneflowError
from tasks.evaluate import baseline_key, evaluate_baseline, evaluate_pruned, pruned_key
from tasks.files import storage_errors, write_json
from tasks.inputs import check_inputs
from tasks.prune import prune_train, strip, strip_key, train_key
from tasks.report import markdown_table
from tasks.sanity import sanity_check, sanity_key
from tasks.schedule import resolve_schedule
from tasks.size import measure_size, size_key
from tasks.store import ArtifactStore, code_version, digest_of
from tasks.sweep import (
    TargetResult,
    append_history,
    at_target,
    best_candidate,
    choose,
    history_rows,
    plot_sweep,
    promote,
)

SWEEP_KEY = "pruneflow-sweep"


def dask_runner(address: str, workers: int = 2):
    """A DaskTaskRunner: on the scheduler at `address`, or, for "local", a LocalCluster of
    `workers` processes (one thread each: TensorFlow wants a process per training).

    Raises:
        PruneflowError: no Prefect server is configured. Dask workers are other processes: each
            would start its own temporary server, and the runs would not be recorded together.
    """
    from prefect.settings import PREFECT_API_URL
    from prefect_dask import DaskTaskRunner

    if not PREFECT_API_URL.value():
        raise PruneflowError(
            "a sweep on Dask needs a Prefect server its workers can report to: start one "
            "(`prefect server start`, or `make serve`) and set PREFECT_API_URL"
        )
    if address == "local":
        return DaskTaskRunner(
            cluster_class="distributed.LocalCluster",
            cluster_kwargs={"n_workers": workers, "threads_per_worker": 1, "processes": True, "dashboard_address": None},
        )
    return DaskTaskRunner(address=address)


def map_stage(stage: Task, store: ArtifactStore, keys: dict[float, str], cap: int, per_target: dict, **shared) -> dict:
    """Run `stage` for every target, `cap` at a time, as mapped task runs.

    Like run_stage, a target whose stored artifact is missing or damaged bypasses the cache.

    Args:
        keys: target -> artifact key.
        per_target: parameter name -> {target: value}.
        shared: parameters that are the same for every target.

    Returns:
        target -> the stage's result, or the exception it failed with.
    """
    targets = list(keys)
    results = {}
    for start in range(0, len(targets), cap):
        chunk = targets[start:start + cap]
        futures = {}
        for refresh in (False, True):
            group = [t for t in chunk if (store.problem(stage.name, keys[t]) is not None) == refresh]
            if not group:
                continue
            task = stage.with_options(refresh_cache=True) if refresh else stage
            mapped = task.map(
                store=unmapped(store), key=[keys[t] for t in group],
                **{name: [values[t] for t in group] for name, values in per_target.items()},
                **{name: unmapped(value) for name, value in shared.items()},
            )
            futures.update(zip(group, mapped))
        for target, future in futures.items():
            future.wait()
            results[target] = future.result(raise_on_failure=False)
    return results


def succeeded(results: dict) -> dict:
    return {target: result for target, result in results.items() if not isinstance(result, BaseException)}


@flow(name="sweep", task_runner=ThreadPoolTaskRunner(max_workers=4))
def sweep_flow(config: RunConfig) -> list[TargetResult]:
    """Prune the baseline to each target sparsity and promote the smallest model within the gate."""
    logger = get_run_logger()
    started = datetime.now(timezone.utc)
    gate, cap = config.sweep, config.sweep.max_parallel
    inputs = check_inputs(config, from_deployment=deployment.id is not None)
    store = ArtifactStore(root=config.output_root / "artifacts")
    run_dir = new_run_dir(config.output_root)
    dataset = run_stage(prepare_dataset, store, inputs.dataset_key, config=config.dataset)
    baseline = run_stage(
        evaluate_baseline, store, baseline_key(inputs.baseline_digest, dataset),
        model_path=config.model.baseline, dataset=dataset, config=config.dataset,
        trust_custom_code=config.model.trust_custom_code,
    )
    steps = config.steps_per_epoch(dataset.counts["train"])
    schedules = {t: resolve_schedule(at_target(inputs.schedule, t), steps, config.training.epochs) for t in gate.targets}
    training = prune_train.with_options(
        retries=config.training.retries,
        retry_delay_seconds=exponential_backoff(backoff_factor=config.training.retry_delay_seconds),
    )
    failures: dict[float, BaseException] = {}

    def stage(task, keys, per_target, **shared):
        results = map_stage(task, store, keys, cap, per_target, **shared)
        failures.update({t: r for t, r in results.items() if isinstance(r, BaseException)})
        return succeeded(results)

    trained = stage(
        training, {t: train_key(config, dataset, s) for t, s in schedules.items()}, {"schedule": schedules},
        config=config, dataset=dataset,
    )
    stripped = stage(
        strip, {t: strip_key(m) for t, m in trained.items()}, {"trained": trained}, dataset=dataset, config=config
    )
    sanity = stage(
        sanity_check,
        {t: sanity_key(trained[t], s, schedules[t].final_sparsity, config.sanity_tolerance) for t, s in stripped.items()},
        {
            "wrapped_path": {t: trained[t].wrapped_model for t in stripped},
            "stripped_path": {t: s.model for t, s in stripped.items()},
            "expected": {t: schedules[t].final_sparsity for t in stripped},
        },
        tolerance=config.sanity_tolerance,
    )
    sizes = stage(
        measure_size, {t: size_key(config.model.baseline, stripped[t]) for t in sanity},
        {"pruned_path": {t: stripped[t].model for t in sanity}}, baseline_path=config.model.baseline,
    )
    pruned = stage(
        evaluate_pruned, {t: pruned_key(stripped[t].digest, dataset) for t in sizes},
        {"model_path": {t: stripped[t].model for t in sizes}}, dataset=dataset, config=config.dataset,
    )
    results = [
        TargetResult(
            target=t, schedule=schedules[t], baseline=baseline, pruned=pruned[t], training=trained[t],
            sanity=sanity[t], sizes=sizes[t], pruned_model=stripped[t].model,
        )
        for t in gate.targets if t in pruned
    ]

    # With a target missing, the smallest passing model may be the one that failed: keep the
    # promoted model until a complete sweep.
    chosen = None if failures else choose(results, gate)
    run_id = str(flow_run.id or "local")
    with storage_errors(config.output_root, "the sweep's promoted model, history and report"):
        if chosen is not None:
            folder = promote(chosen, config, run_id, config.output_root)
            logger.info("Promoted the %.2f-sparsity model (%s) to %s", chosen.target, chosen.row(gate)["change"], folder)
        rows = history_rows(
            results, chosen, gate, flow_run_id=run_id, started=started,
            code_version=code_version("tasks.prune", "tasks.dataset", "tasks.models", "tasks.schedule"),
            config_digest=digest_of(config.model_dump(mode="json", exclude={"sweep"}))[:16],
        )
        if results:
            append_history(config.output_root, rows)
        publish_sweep(results, chosen, failures, config, run_dir)

    if failures:
        listed = "; ".join(f"{t}: {type(e).__name__}: {e}" for t, e in sorted(failures.items()))
        raise PruneflowError(f"sweep: {len(failures)} of {len(gate.targets)} target(s) failed: {listed}")
    if chosen is None:
        best = best_candidate(results)
        raise PruneflowError(
            f"sweep: no target passed the gate (max_accuracy_drop {gate.max_accuracy_drop} points, min_sparsity "
            f"{gate.min_sparsity}); the best candidate, sparsity {best.target}, has test accuracy "
            f"{best.pruned.accuracy:.4f} ({best.accuracy_change:+.2f} points) at {best.sizes.pruned.zip_bytes:,} bytes "
            f"zipped. The previously promoted model, if any, is kept in {config.output_root / 'promoted'}."
        )
    return results


def render_sweep(results: list[TargetResult], chosen: TargetResult | None, config: RunConfig) -> str:
    """The sweep's table as Markdown, and what was promoted."""
    rows = [result.row(config.sweep) for result in results]
    if not rows:
        return "No target completed."
    table = markdown_table(rows)
    baseline = results[0].baseline
    promoted = (
        f"Promoted: sparsity {chosen.target}, to `{config.output_root / 'promoted'}`" if chosen else "Promoted: none"
    )
    return f"Baseline test accuracy {baseline.accuracy:.4f}.\n\n{table}\n\n{promoted}"


def publish_sweep(results, chosen, failures, config: RunConfig, run_dir: Path) -> None:
    """sweep.json and sweep.png in the run's folder, and the table as Prefect artifacts."""
    write_json(run_dir / "sweep.json", {
        "results": [result.model_dump(mode="json") for result in results],
        "promoted": chosen.target if chosen else None,
        "failed": {str(t): f"{type(e).__name__}: {e}" for t, e in failures.items()},
        "gate": config.sweep.model_dump(mode="json"),
    })
    markdown = render_sweep(results, chosen, config)
    where = f"- Run folder: `{run_dir}` (sweep.json)\n"
    if results:
        plot = plot_sweep(results, config.sweep, run_dir / "sweep.png")
        models = ", ".join(f"{r.target:.2f}: `{r.pruned_model}`" for r in results)
        where += f"- Plot: `{plot}`\n- Models: {models}\n"
    create_markdown_artifact(key=SWEEP_KEY, markdown=f"# Sparsity sweep\n\n{markdown}\n\n{where}", description="Sweep")
    if results:
        create_table_artifact(key=f"{SWEEP_KEY}-table", table=[r.row(config.sweep) for r in results], description="Sweep")
    get_run_logger().info("Sweep:\n%s", markdown)
