"""A sweep's search: Optuna proposes the points instead of a listed grid.

Each trial is one point (a target sparsity, and a fraction of channels where the search has a
range for it) through the same cached graph a grid point takes (pruneflow.flows.graph.prune_target):
a point proposed twice, in this search or an earlier one, is not trained again, and a repeat
does not count against sweep.search.trials (the budget is points pruned). The sampler is
Optuna's multi-objective TPE, its first trials (sweep.search.startup_fraction of the budget)
drawn at random; it is told each trial's validation accuracy (of the pruned Keras model) and the
zip-deflated size of its smallest file, so that the test split chooses nothing. A trial whose
validation accuracy at sweep.search.stop_after_epochs is already out of the gate's reach stops
there (prune_train's StopRule; Optuna's pruners do not serve multi-objective studies) and is told
as pruned. The sweep then reports the Pareto front of every file made and lets the gate and the
champion choose from it, as after a grid.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from pruneflow.flows.graph import Prepared, Run, prune_target
from pruneflow.tasks.core.log import run_logger
from pruneflow.tasks.libs.outcome import Point, StoppedTarget, TargetResult, Trial
from pruneflow.tasks.libs.schedule import at_target, resolve_schedule
from pruneflow.tasks.specs.config import RunConfig, Schedule, SearchConfig
from pruneflow.tasks.stages.prune_train import StopRule

if TYPE_CHECKING:
    import optuna

Outcome = TargetResult | StoppedTarget | BaseException

MAX_ASKS = 5  # proposals per point of the budget, repeats included, before the search ends


def schedule_at(config: RunConfig, run: Run, target: float) -> Schedule:
    """The run's schedule aimed at `target`, resolved (and refused if it would not prune)."""
    steps = config.training_spec.steps_per_epoch(run.inputs.listing.counts["train"])
    return resolve_schedule(at_target(run.inputs.schedule, target), steps, config.training.epochs)


def startup_trials(search: SearchConfig) -> int:
    return max(1, math.ceil(search.startup_fraction * search.trials))


def grid_steps(search: SearchConfig, low: float, high: float) -> int:
    """The last index of the search's grid between `low` and `high` (0 when they are one point)."""
    return math.floor((high - low) / search.step + 1e-9)


def grid_size(search: SearchConfig) -> int:
    """How many distinct points the search can propose."""
    ranges = [search.sparsity] + ([search.channel_fraction] if search.channel_fraction else [])
    return math.prod(grid_steps(search, *bounds) + 1 for bounds in ranges)


def propose(trial: optuna.trial.Trial, search: SearchConfig) -> Point:
    """The trial's point, on the search's grid (so that a point proposed twice is one cached graph)."""

    def on_grid(name: str, low: float, high: float) -> float:
        return round(low + search.step * trial.suggest_int(name, 0, grid_steps(search, low, high)), 6)

    target = on_grid("sparsity", *search.sparsity)
    channels = on_grid("channel_fraction", *search.channel_fraction) if search.channel_fraction else 0.0
    return Point(target, channels)


def objectives(result: TargetResult) -> tuple[float, int]:
    """What the sampler is told: the pruned Keras model's validation accuracy, and its smallest file's size."""
    return result.training.final_val_accuracy, min(f.zip_bytes for f in result.deployables if f.model == "pruned")


def record(study: optuna.Study, trial: optuna.trial.Trial, number: int, point: Point, outcome: Outcome,
           repeat: bool) -> Trial:
    """Tell the study what became of `trial`, and return it as the report's row."""
    from optuna.trial import TrialState

    kind = "repeat" if repeat else "completed"
    if isinstance(outcome, TargetResult):
        accuracy, size = objectives(outcome)
        study.tell(trial, [accuracy, size])
        return Trial(number=number, point=point, outcome=kind, val_accuracy=accuracy, zip_bytes=size)
    if isinstance(outcome, StoppedTarget):
        study.tell(trial, state=TrialState.PRUNED)
        return Trial(number=number, point=point, outcome="repeat" if repeat else "stopped",
                     val_accuracy=outcome.val_accuracy, stopped_after_epoch=outcome.training.stopped_after_epoch)
    study.tell(trial, state=TrialState.FAIL)
    return Trial(number=number, point=point, outcome="failed")


def describe(trial: Trial) -> str:
    """The trial's log line."""
    head = f"Trial {trial.number}: sparsity {trial.point.label()}"
    if trial.outcome == "failed":
        return f"{head}: failed"
    again = " (proposed before: not run again)" if trial.outcome == "repeat" else ""
    if trial.stopped_after_epoch is not None:
        return (f"{head}: stopped after epoch {trial.stopped_after_epoch}, val accuracy {trial.val_accuracy:.4f} "
                f"out of the gate's reach{again}")
    return f"{head}: val accuracy {trial.val_accuracy:.4f}, smallest file {trial.zip_bytes:,} B zip-deflated{again}"


def search_points(config: RunConfig, start: Prepared, run: Run) -> tuple[dict[Point, Outcome], list[Trial]]:
    """Run trials, `sweep.max_parallel` at a time, until `sweep.search.trials` distinct points are
    pruned (or every point of the grid is). A point proposed again is told its figures again and
    costs nothing: it does not count; a sampler that proposes only points already run for
    MAX_ASKS times the budget ends the search.

    Returns:
        each distinct point, in order -> its result, the stopped trial, or the exception it failed with; and every
        trial in order, repeats included.
    """
    import optuna

    search, cap, logger = config.sweep.search, config.sweep.max_parallel, run_logger()
    budget = min(search.trials, grid_size(search))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = optuna.samplers.TPESampler(n_startup_trials=startup_trials(search), seed=search.seed)
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)
    stop = None
    if search.stop_after_epochs is not None:
        drop = config.sweep.max_accuracy_drop + search.stop_margin
        stop = StopRule(after_epochs=search.stop_after_epochs, max_drop=drop, reference=start.model)
    outcomes: dict[Point, Outcome] = {}
    trials: list[Trial] = []
    while len(outcomes) < budget and len(trials) < MAX_ASKS * search.trials:
        wave = [study.ask() for _ in range(min(cap, budget - len(outcomes)))]
        points = [propose(trial, search) for trial in wave]
        new = list(dict.fromkeys(point for point in points if point not in outcomes))
        futures = {
            point: prune_target.submit(config, start, point, schedule_at(config, run, point.target), stop)
            for point in new
        }
        for point, future in futures.items():
            outcomes[point] = future.result(raise_on_failure=False)
        first = set(new)
        for trial, point in zip(wave, points):
            done = record(study, trial, len(trials) + 1, point, outcomes[point], repeat=point not in first)
            first.discard(point)
            trials.append(done)
            logger.info("%s [%d of %d points]", describe(done), len(outcomes), budget)
    return dict(sorted(outcomes.items())), trials
