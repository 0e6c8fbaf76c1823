"""The stage graph, written once; both flows run it.

A run starts with check_inputs (start_run). `prepare` runs the stages that do not depend on
the sparsity: once per run, a sweep's included. `prune_to` runs the rest for one schedule:
once in a pruning run, and once per target in a sweep, where `prune_target` makes it one task
run per target so that the sweep can map it. Each stage call below is a Prefect task that
keys, stores and reuses its artifact itself (tasks.stage): the wiring is all there is here.
"""

from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.cache_policies import NONE
from prefect.runtime import deployment, flow_run
from prefect.utilities.annotations import quote
from pydantic import BaseModel, ConfigDict

from flows.user_errors import quiet_user_errors
from tasks.config import RunConfig, Schedule
from tasks.dataset import PreparedDataset, prepare_dataset
from tasks.evaluate import Evaluation, evaluate_baseline, evaluate_pruned
from tasks.export import ExportedModels, export_baseline, export_pruned
from tasks.inputs import RunInputs, check_inputs
from tasks.interpreter import ExportEvaluation, evaluate_baseline_exports, evaluate_pruned_exports
from tasks.latency import machine_description, measure_latency
from tasks.layout import OutputLayout
from tasks.models import ModelFile
from tasks.outcome import PruningOutcome, TargetResult
from tasks.prune import prune_train, strip
from tasks.qat import quantize_train
from tasks.sanity import sanity_check
from tasks.size import measure_size
from tasks.stage import timed
from tasks.store import ArtifactStore


class Run(BaseModel):
    """A run that passed check_inputs: what it read, where it writes."""

    model_config = ConfigDict(frozen=True)

    inputs: RunInputs
    layout: OutputLayout
    run_dir: Path


class Prepared(BaseModel):
    """What every schedule of a run starts from: the stored dataset and the evaluated baseline."""

    model_config = ConfigDict(frozen=True)

    store: ArtifactStore
    model: ModelFile
    dataset: PreparedDataset
    baseline: Evaluation
    baseline_exports: ExportedModels
    baseline_export_evaluation: ExportEvaluation


def start_run(config: RunConfig) -> Run:
    """Check the inputs (nothing is written if they fail), then make the run's folder."""
    quiet_user_errors()  # in a worker's process too
    with timed("check_inputs"):
        inputs = check_inputs(config, from_deployment=deployment.id is not None)
    layout = OutputLayout(root=config.output_root)
    return Run(inputs=inputs, layout=layout, run_dir=layout.new_run_dir(flow_run.name))


def prepare(config: RunConfig, run: Run) -> Prepared:
    store = run.layout.store
    # quote: Prefect would otherwise walk the listing's three entries per image, twice, to look
    # for futures in it, which costs more than the whole stage when it is reused.
    dataset = prepare_dataset(store, listing=quote(run.inputs.listing), shape=config.dataset.shape)
    model, batch_size = run.inputs.baseline, config.dataset.batch_size
    baseline = evaluate_baseline(store, model=model, dataset=dataset, batch_size=batch_size)
    exports = export_baseline(
        store, model=model, dataset=dataset, export=config.export_spec.dense(), sanity=None, quantized=None
    )
    assessed = evaluate_baseline_exports(
        store, exported=exports, reference=model, quantized=None, dataset=dataset, batch_size=batch_size
    )
    return Prepared(
        store=store, model=model, dataset=dataset, baseline=baseline, baseline_exports=exports,
        baseline_export_evaluation=assessed,
    )


def prune_to(config: RunConfig, start: Prepared, schedule: Schedule) -> PruningOutcome:
    store, dataset = start.store, start.dataset
    training = prune_train.retrying(config.training.retries, config.training.retry_delay_seconds)
    trained = training(store, dataset=dataset, baseline=start.model, schedule=schedule, training=config.training_spec)
    stripped = strip(store, trained=trained, dataset=dataset)
    sanity = sanity_check(
        store, stripped=stripped, schedule=schedule, training=config.training_spec, tolerance=config.sanity_tolerance
    )
    sizes = measure_size(store, baseline=start.model, pruned=stripped.file)
    pruned = evaluate_pruned(store, model=stripped.file, dataset=dataset, batch_size=config.dataset.batch_size)
    quantized = quantize_train(store, dataset=dataset, pruned=stripped.file, qat=config.qat_spec)
    exports = export_pruned(
        store, model=stripped.file, dataset=dataset, export=config.export_spec, sanity=sanity, quantized=quantized
    )
    assessed = evaluate_pruned_exports(
        store, exported=exports, reference=stripped.file, quantized=quantized, dataset=dataset,
        batch_size=config.dataset.batch_size,
    )
    latency = measure_latency(
        store, baseline=start.model, baseline_exports=start.baseline_exports, pruned=stripped.file,
        pruned_exports=exports, shape=config.dataset.shape, latency=config.latency_spec, machine=machine_description(),
    )
    return PruningOutcome(
        pruned_model=stripped.model, schedule=schedule, baseline=start.baseline, pruned=pruned,
        sanity=sanity, sizes=sizes, training=trained, baseline_exports=start.baseline_exports,
        baseline_export_evaluation=start.baseline_export_evaluation,
        exports=exports, export_evaluation=assessed, latency=latency,
    )


@task(cache_policy=NONE)
def prune_target(config: RunConfig, start: Prepared, target: float, schedule: Schedule) -> TargetResult:
    """One target of a sweep: prune_to as one task run, its stages nested in it."""
    return TargetResult(target=target, **dict(prune_to(config, start, schedule)))
