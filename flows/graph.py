"""The stage graph, written once; both flows run it.

A run starts with check_inputs (start_run). `prepare` runs the stages that do not depend on
the sparsity: once per run, a sweep's included. `prune_to` runs the rest for one schedule:
once in a pruning run, and once per target in a sweep, where `prune_target` makes it one task
run per target so that the sweep can map it. Each stage call below is a Prefect task that
keys, stores and reuses its artifact itself (pruneflow.tasks.core.stage): the wiring is all there is here.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

from prefect import task
from prefect.cache_policies import NONE
from prefect.runtime import deployment, flow_run
from prefect.utilities.annotations import quote
from pydantic import BaseModel, ConfigDict

from pruneflow.flows.running import run_stage, timed
from pruneflow.flows.stages import STAGES
from pruneflow.flows.user_errors import quiet_user_errors
from pruneflow.tasks.core.layout import OutputLayout
from pruneflow.tasks.core.store import ArtifactStore
from pruneflow.tasks.libs.artifacts import (
    Evaluation,
    ExportedModels,
    ExportEvaluation,
    NarrowedModel,
    PreparedDataset,
    TrainedModel,
)
from pruneflow.tasks.libs.models import ModelFile
from pruneflow.tasks.libs.outcome import Point, PruningOutcome, StoppedTarget, TargetResult
from pruneflow.tasks.libs.timing import machine_description
from pruneflow.tasks.preflight.check_inputs import RunInputs, check_inputs
from pruneflow.tasks.specs.config import ExportSpec, RunConfig, Schedule
from pruneflow.tasks.stages.evaluate import evaluate_baseline, evaluate_pruned
from pruneflow.tasks.stages.evaluate_exports import evaluate_baseline_exports, evaluate_pruned_exports
from pruneflow.tasks.stages.export_fallback import export_fallback_pruned
from pruneflow.tasks.stages.export_keras3 import export_keras3_baseline, export_keras3_pruned
from pruneflow.tasks.stages.export_onnx import export_onnx_baseline, export_onnx_pruned
from pruneflow.tasks.stages.export_tflite import export_baseline, export_pruned
from pruneflow.tasks.stages.measure_latency import measure_latency
from pruneflow.tasks.stages.measure_size import measure_size
from pruneflow.tasks.stages.prepare_dataset import prepare_dataset
from pruneflow.tasks.stages.prune_channels import prune_channels
from pruneflow.tasks.stages.prune_train import StopRule, prune_train
from pruneflow.tasks.stages.quantization_error import quantization_error
from pruneflow.tasks.stages.quantize_train import quantize_train
from pruneflow.tasks.stages.sanity_check import sanity_check
from pruneflow.tasks.stages.strip import strip
from pruneflow.tasks.stages.translate_baseline import translate_baseline
from pruneflow.tasks.unkeyed import progress


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
    model: ModelFile  # the tf_keras baseline every stage reads (a Keras 3 one's translation)
    original: ModelFile  # the baseline file as given
    export: ExportSpec  # the config's formats, and the Keras 3 file for a Keras 3 baseline
    dataset: PreparedDataset
    baseline: Evaluation
    baseline_exports: list[ExportedModels]
    baseline_export_evaluation: ExportEvaluation


def start_run(config: RunConfig) -> Run:
    """Check the inputs (nothing is written if they fail), then make the run's folder."""
    quiet_user_errors()  # in a worker's process too
    with timed("check_inputs"):
        inputs = check_inputs(config, from_deployment=deployment.id is not None, stages=quote(STAGES))
    layout = OutputLayout(root=config.output_root)
    return Run(inputs=inputs, layout=layout, run_dir=layout.new_run_dir(flow_run.name))


def tf_keras_baseline(run: Run, dataset: PreparedDataset) -> ModelFile:
    """The baseline as every stage reads it: the file itself, or a Keras 3 one's tf_keras translation."""
    if not run.inputs.baseline_keras3:
        return run.inputs.baseline
    return run_stage(translate_baseline, run.layout.store, baseline=run.inputs.baseline, dataset=dataset).file


def prepare(config: RunConfig, run: Run) -> Prepared:
    store = run.layout.store
    # quote: Prefect would otherwise walk the listing's three entries per image, twice, to look
    # for futures in it, which costs more than the whole stage when it is reused.
    dataset = run_stage(prepare_dataset, store, listing=quote(run.inputs.listing), shape=config.dataset.shape)
    original, batch_size, export = run.inputs.baseline, config.dataset.batch_size, config.export_spec
    model = tf_keras_baseline(run, dataset)
    if run.inputs.baseline_keras3:
        export = export.with_keras3()
    baseline = run_stage(evaluate_baseline, store, model=model, dataset=dataset, batch_size=batch_size)
    dense = export.dense()
    exports = [
        run_stage(export_baseline, store, model=model, dataset=dataset, export=dense.made_by("tflite"), sanity=None,
                  quantized=None),
        run_stage(export_onnx_baseline, store, model=model, dataset=dataset, export=dense.made_by("onnx"),
                  sanity=None, quantized=None),
        run_stage(export_keras3_baseline, store, model=model, original=original, dataset=dataset,
                  export=dense.made_by("keras3"), sanity=None),
    ]
    assessed = run_stage(
        evaluate_baseline_exports, store, exports=exports, reference=model, quantized=None, dataset=dataset,
        batch_size=batch_size,
    )
    return Prepared(
        store=store, model=model, original=original, export=export, dataset=dataset, baseline=baseline,
        baseline_exports=exports,
        baseline_export_evaluation=assessed,
    )


class Trained(NamedTuple):
    """A schedule's model after prune-training: the narrowed model it started from, if any."""

    narrowed: NarrowedModel | None
    trained: TrainedModel


def train_to(config: RunConfig, start: Prepared, schedule: Schedule, stop: StopRule | None = None) -> Trained:
    """Channel pruning, if configured, then prune-training (ended early by `stop`, a search's rule)."""
    store, channels, narrowed = start.store, config.channel_spec, None
    if channels is not None:  # prune_train fine-tunes the narrowed model
        narrowed = run_stage(prune_channels, store, baseline=start.model, channels=channels)
    training = prune_train.retrying(config.training.retries, config.training.retry_delay_seconds)
    trained = run_stage(
        training, store, dataset=start.dataset, baseline=start.model if narrowed is None else narrowed.file,
        schedule=schedule, training=config.training_spec,
        stop=stop,
    )
    return Trained(narrowed, trained)


def prune_to(config: RunConfig, start: Prepared, schedule: Schedule, done: Trained | None = None) -> PruningOutcome:
    """Every stage after `prepare` for one schedule (from `done`'s training, when given)."""
    store, dataset, export = start.store, start.dataset, start.export
    narrowed, trained = done or train_to(config, start, schedule)
    if narrowed is not None:
        export = export.without_keras3()  # the Keras 3 hand-back keeps the baseline's shapes
    stripped = run_stage(strip, store, trained=trained, dataset=dataset)
    sanity = run_stage(
        sanity_check, store, stripped=stripped, schedule=schedule, training=config.training_spec,
        tolerance=config.sanity_tolerance,
    )
    sizes = run_stage(measure_size, store, baseline=start.model, pruned=stripped.file)
    pruned = run_stage(
        evaluate_pruned, store, model=stripped.file, dataset=dataset, batch_size=config.dataset.batch_size
    )
    quantized = run_stage(quantize_train, store, dataset=dataset, pruned=stripped.file, qat=config.qat_spec)
    tflite, onnx = export.made_by("tflite"), export.made_by("onnx")

    def qat_for(spec: ExportSpec):  # only a stage with a format made from it takes the QAT model
        return quantized if spec.wants_qat else None

    errors = run_stage(quantization_error, store, model=stripped.file, dataset=dataset, export=config.layer_errors_spec)
    exports = [
        run_stage(export_pruned, store, model=stripped.file, dataset=dataset, export=tflite, sanity=sanity,
                  quantized=qat_for(tflite)),
        run_stage(export_fallback_pruned, store, model=stripped.file, dataset=dataset, export=export.made_by("fallback"),
                  fallback=config.fallback_spec, errors=errors, sanity=sanity),
        run_stage(export_onnx_pruned, store, model=stripped.file, dataset=dataset, export=onnx, sanity=sanity,
                  quantized=qat_for(onnx)),
        run_stage(export_keras3_pruned, store, model=stripped.file, original=start.original, dataset=dataset,
                  export=export.made_by("keras3"), sanity=sanity),
    ]
    assessed = run_stage(
        evaluate_pruned_exports, store, exports=exports, reference=stripped.file,
        quantized=qat_for(export), dataset=dataset, batch_size=config.dataset.batch_size,
    )
    latency = run_stage(
        measure_latency, store, baseline=start.model, baseline_exports=start.baseline_exports,
        pruned=stripped.file, pruned_exports=exports, shape=config.dataset.shape, latency=config.latency_spec,
        machine=machine_description(),
    )
    return PruningOutcome(
        pruned_model=stripped.model, schedule=schedule, channels=narrowed, baseline=start.baseline, pruned=pruned,
        sanity=sanity, sizes=sizes, training=trained, baseline_exports=start.baseline_exports,
        baseline_export_evaluation=start.baseline_export_evaluation,
        exports=exports, export_evaluation=assessed, latency=latency, quantization_errors=errors,
    )


@task(cache_policy=NONE)
def prune_target(
    config: RunConfig, start: Prepared, point: Point, schedule: Schedule, stop: StopRule | None = None
) -> TargetResult | StoppedTarget:
    """One point of a sweep: prune_to as one task run, its stages nested in it; a search's trial
    that `stop` ends in prune-training ends there."""
    config = config.with_channels(point.channels)
    # Through the module: Dask pickles this function by value, and a ContextVar cannot be pickled.
    progress.for_point(point.label())  # this task run's context: what its stages report is for this point
    done = train_to(config, start, schedule, stop)
    if done.trained.stopped_after_epoch is not None:
        return StoppedTarget(point=point, training=done.trained)
    outcome = prune_to(config, start, schedule, done)
    return TargetResult(target=point.target, channel_fraction=point.channels, **dict(outcome))
