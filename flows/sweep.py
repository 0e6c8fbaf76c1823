"""The sweep flow: one baseline pruned to several target sparsities, the smallest good file promoted.

The inputs are checked, the dataset prepared and the baseline evaluated once, as in a run;
then the run's graph from prune-training on (pruneflow.flows.graph.prune_to) runs once per target, as
mapped task runs, at most `sweep.max_parallel` at a time; or, with `sweep.search`, once per point
Optuna proposes (pruneflow.flows.search). Each target gives several deployable
files (its Keras .h5 and its TFLite exports); the gate picks the smallest file whose own
accuracy is within it (the challenger); the file promoted before (the champion) is measured
again in this run, and the challenger is promoted with its Keras model to `OUTPUT_ROOT/promoted`
only if it beats it (pruneflow.tasks.decide.champion); every sweep adds its rows to the history, emits
pruneflow's regression event if it regressed (pruneflow.tasks.decide.events), and publishes its table. With a
registry, the sweep is an MLflow run and a promotion a registered version (pruneflow.tasks.decide.registry); a
promotion killed mid-way is rolled back by the next sweep, first thing (pruneflow.tasks.decide.promote). A sweep
run again as the same flow run (rescheduled after its worker died, pruneflow.deployments.recovery; or
retried) does not promote twice: a file the earlier attempt promoted stays, and the history
counts the later attempt's rows only.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

from prefect import flow, unmapped
from prefect.runtime import flow_run
from prefect.task_runners import ThreadPoolTaskRunner
from pydantic import BaseModel, ConfigDict

from pruneflow.flows.graph import Prepared, Run, prepare, prune_target, start_run
from pruneflow.flows.running import run_stage
from pruneflow.flows.search import schedule_at, search_points
from pruneflow.flows.user_errors import quiet_user_errors
from pruneflow.tasks.core.errors import PruneflowError
from pruneflow.tasks.core.store import digest_of
from pruneflow.tasks.decide.champion import Decision, challenge, current_champion, promoted_by
from pruneflow.tasks.decide.events import announce_regression
from pruneflow.tasks.decide.gate import accuracy_drop, best_candidate, choose
from pruneflow.tasks.decide.history import history_rows, read_history, record_history, regressions, runs_summary
from pruneflow.tasks.decide.promote import promote_model, recover
from pruneflow.tasks.decide.registry import sweep_run
from pruneflow.tasks.libs.artifacts import ChampionEvaluation
from pruneflow.tasks.libs.outcome import Deployable, Point, TargetResult, Trial
from pruneflow.tasks.libs.timing import machine_description
from pruneflow.tasks.report.summary import publish_sweep
from pruneflow.tasks.specs.config import RunConfig, Schedule
from pruneflow.tasks.specs.formats import display_name
from pruneflow.tasks.stages.evaluate_champion import evaluate_champion
from pruneflow.tasks.stages.prune_train import prune_train
from pruneflow.tasks.unkeyed.progress import report


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


def sweep_points(config: RunConfig) -> list[Point]:
    """Every (target, channel fraction) the sweep prunes to: each target with each of
    sweep.channel_fractions, or with channel_pruning's fraction (0 without it)."""
    fractions = config.sweep.channel_fractions or [config.channel_pruning.fraction if config.channel_pruning else 0.0]
    return [Point(target, fraction) for fraction in fractions for target in config.sweep.targets]


def prune_targets(
    config: RunConfig, start: Prepared, schedules: dict[Point, Schedule]
) -> dict[Point, TargetResult | BaseException]:
    """Every point through the pruning graph, `sweep.max_parallel` at a time.

    Returns:
        point -> its result, or the exception it failed with.
    """
    points, cap, results = list(schedules), config.sweep.max_parallel, {}
    report("points", labels=[point.label() for point in points])
    for first in range(0, len(points), cap):
        wave = points[first:first + cap]
        futures = prune_target.map(
            config=unmapped(config), start=unmapped(start), point=wave, schedule=[schedules[p] for p in wave]
        )
        for point, future in zip(wave, futures):
            results[point] = future.result(raise_on_failure=False)
    return results


def measure_champion(config: RunConfig, start: Prepared, run: Run) -> ChampionEvaluation | None:
    """The promoted file, if any, measured in this run: on its test split, on this machine."""
    champion = current_champion(run.layout)
    if champion is None:
        return None
    return run_stage(
        evaluate_champion, start.store, champion=champion, dataset=start.dataset,
        batch_size=config.dataset.batch_size, latency=config.latency_spec, machine=machine_description(),
    )


def check_regression(run_id: str, history: Path) -> None:
    """Send pruneflow's regression event if this run regressed against the history before it."""
    runs = runs_summary(read_history(history))
    found = regressions(runs).get(run_id)
    if found:
        announce_regression(runs, run_id, flow_run.name or run_id, found, str(history))


class SweepOutcome(BaseModel):
    """What a sweep produced: every target's result, the gate's choice, the decision against the champion."""

    model_config = ConfigDict(frozen=True)

    results: list[TargetResult]
    chosen: tuple[TargetResult, Deployable] | None
    decision: Decision
    run_dir: Path  # sweep.json, sweep.md and sweep.png
    trials: list[Trial] | None = None  # a search's, in order


@flow(name="sweep", task_runner=ThreadPoolTaskRunner(max_workers=4))
def sweep_flow(config: RunConfig) -> SweepOutcome:
    """Prune the baseline to each target sparsity; promote the smallest file within the gate if it
    beats the champion."""
    started = datetime.now(timezone.utc)
    gate = config.sweep
    quiet_user_errors()  # before the first user error this flow can raise
    if config.layers.m_by_n is not None:
        raise PruneflowError(
            f"sweep: layers.m_by_n {list(config.layers.m_by_n)} prunes every layer to exactly "
            f"{config.layers.structured_sparsity:g}, so there is no sparsity to sweep: use `pruneflow run`, or remove "
            "layers.m_by_n to sweep targets."
        )
    run = start_run(config)
    recover(run.layout)  # a promotion killed mid-way is rolled back before the champion is read
    run_id = str(flow_run.id or "local")
    # Opened before any training, so that an unreachable registry fails the sweep at once.
    with sweep_run(config.registry, flow_run.name or run_id, run_id) as registry:
        # Every target's schedule is resolved (and refused if it would not prune) before any work.
        trials = None
        if gate.search is None:
            schedules = {p: schedule_at(config, run, p.target) for p in sweep_points(config)}
            start = prepare(config, run)
            outcomes = prune_targets(config, start, schedules)
        else:
            start = prepare(config, run)
            outcomes, trials = search_points(config, start, run)
        results = [outcome for outcome in outcomes.values() if isinstance(outcome, TargetResult)]
        failures = {t: f"{type(e).__name__}: {e}" for t, e in outcomes.items() if isinstance(e, BaseException)}

        # With a target missing, the smallest passing model may be the one that failed: keep the
        # promoted model until a complete sweep.
        chosen = None if failures else choose(results, gate)
        if failures:
            decision = Decision.incomplete(len(failures), len(outcomes))
        elif chosen is not None and promoted_by(run.layout) == run_id:
            decision = Decision.promoted_earlier()  # this run, rescheduled after its worker died
        else:
            decision = challenge(chosen, measure_champion(config, start, run) if chosen else None, gate)
            if decision.promote:
                decision = promote_model(chosen, decision, config, run_id, run.layout, registry)
        promoted = chosen if decision.promote else None
        rows = history_rows(
            results, promoted, gate, flow_run_id=run_id, started=started, code_version=prune_train.code,
            config_digest=digest_of(config.model_dump(mode="json", exclude={"sweep", "sensitivity", "registry"}))[:16],
            failures=failures, decision=decision.verdict, why=decision.why,
        )
        record_history(rows, run.layout.history)  # failed targets too: a night where all failed is on record
        check_regression(run_id, run.layout.history)
        publish_sweep(results, chosen, failures, config, run.run_dir, decision, trials)
        if registry is not None:
            registry.log_sweep(config, results, decision, chosen, run.run_dir, failed=bool(failures))

    if failures:
        listed = "; ".join(f"{p.label()}: {why}" for p, why in sorted(failures.items()))
        raise PruneflowError(f"sweep: {len(failures)} of {len(outcomes)} target(s) failed: {listed}")
    if chosen is None:
        result, file = best_candidate(results)
        raise PruneflowError(
            f"sweep: no file passed the gate (max_accuracy_drop {gate.max_accuracy_drop} points, min_sparsity "
            f"{gate.min_sparsity}); the best candidate, sparsity {result.point.label()} as {display_name(file.format)}, has "
            f"test accuracy {file.accuracy:.4f} ({-accuracy_drop(result, file):+.2f} points) at {file.zip_bytes:,} bytes "
            f"zipped. The previously promoted model, if any, is kept in {run.layout.promoted}."
        )
    return SweepOutcome(results=results, chosen=chosen, decision=decision, run_dir=run.run_dir, trials=trials)
