"""What pruning a baseline to one schedule produced: a run's result, and each target's in a sweep."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, computed_field

from pruneflow.tasks.libs.artifacts import (
    Evaluation,
    ExportedFile,
    ExportedModels,
    ExportEvaluation,
    LatencyReport,
    ModelSize,
    NarrowedModel,
    QuantizationErrors,
    SanityReport,
    SizeReport,
    TrainedModel,
)
from pruneflow.tasks.specs.config import Schedule
from pruneflow.tasks.specs.formats import FORMATS, KERAS


class Deployable(BaseModel):
    """One file a user can deploy (the Keras .h5 or an exported file), with what was measured of it.

    Ratios compare like with like: the baseline .h5's raw bytes over this file's raw bytes, its
    zip-deflated bytes over this file's zip-deflated bytes, and so on (higher is smaller).
    `speedup` is the baseline's median latency in the same format (its dense counterpart for a
    sparse or QAT format: int8 for int8_qat_sparse) over this file's: above 1 is faster;
    `batch_speedup` the same at the larger batch (`batch` images a call), where one was timed.
    `flops_ratio` is the model's FLOPs per image over the baseline's: below 1 where channel
    pruning removed work, 1 otherwise (zeros inside a kernel cost the same multiply).
    """

    model_config = ConfigDict(frozen=True)

    model: Literal["baseline", "pruned"]
    format: str
    path: Path
    raw_bytes: int
    zip_bytes: int
    xz_bytes: int
    raw_ratio: float
    zip_ratio: float
    xz_ratio: float
    accuracy: float
    agreement: float  # with the Keras model it was made from
    latency_median_ms: float
    latency_p90_ms: float
    speedup: float
    batch: int | None = None
    batch_median_ms: float | None = None
    batch_speedup: float | None = None
    flops_ratio: float = 1.0


class PruningOutcome(BaseModel):
    """A pruned model against its baseline: what a run, or one target of a sweep, produced."""

    model_config = ConfigDict(frozen=True)

    pruned_model: Path
    schedule: Schedule
    channels: NarrowedModel | None = None  # the channels removed before magnitude pruning, if any
    baseline: Evaluation
    pruned: Evaluation
    sanity: SanityReport
    sizes: SizeReport
    training: TrainedModel
    baseline_exports: list[ExportedModels]  # one per conversion stage
    baseline_export_evaluation: ExportEvaluation
    exports: list[ExportedModels]
    export_evaluation: ExportEvaluation
    latency: LatencyReport
    quantization_errors: QuantizationErrors | None = None  # the int8 file's error per layer (none without int8)

    @computed_field
    @property
    def accuracy_change(self) -> float:
        """Pruned minus baseline test accuracy, in points (percent)."""
        return 100.0 * (self.pruned.accuracy - self.baseline.accuracy)

    @computed_field
    @property
    def measured_sparsity(self) -> float:
        """Zeros over all prunable weights of the pruned model."""
        size = sum(t.size for t in self.sanity.tensors)
        return sum(t.zeros for t in self.sanity.tensors) / size if size else 0.0

    @computed_field
    @property
    def deployables(self) -> list[Deployable]:
        """Every file of the baseline, then of the pruned model: the Keras .h5 first, then each export."""
        reference = self.sizes.baseline

        def row(model, fmt, path, size: ModelSize | ExportedFile, accuracy, agreement) -> Deployable:
            timing = self.latency.of(model, fmt)
            dense = self.latency.of("baseline", FORMATS[fmt].dense)
            batched, dense_batched = self.latency.batched(model, fmt), self.latency.batched("baseline", FORMATS[fmt].dense)
            narrowed = model == "pruned" and self.channels is not None
            return Deployable(
                model=model, format=fmt, path=path, raw_bytes=size.raw_bytes, zip_bytes=size.zip_bytes,
                xz_bytes=size.xz_bytes, raw_ratio=reference.raw_bytes / size.raw_bytes,
                zip_ratio=reference.zip_bytes / size.zip_bytes, xz_ratio=reference.xz_bytes / size.xz_bytes,
                accuracy=accuracy, agreement=agreement, latency_median_ms=timing.median_ms,
                latency_p90_ms=timing.p90_ms, speedup=dense.median_ms / timing.median_ms,
                batch=batched.batch if batched else None, batch_median_ms=batched.median_ms if batched else None,
                batch_speedup=dense_batched.median_ms / batched.median_ms if batched and dense_batched else None,
                flops_ratio=self.channels.flops_ratio if narrowed else 1.0,
            )

        rows = []
        for model, exports, evaluation, keras_path, keras_size, keras_accuracy in (
            ("baseline", self.baseline_exports, self.baseline_export_evaluation, self.sizes.folder / reference.file,
             reference, self.baseline.accuracy),
            ("pruned", self.exports, self.export_evaluation, self.pruned_model, self.sizes.pruned, self.pruned.accuracy),
        ):
            rows.append(row(model, KERAS, keras_path, keras_size, keras_accuracy, 1.0))
            for exported in exports:
                for file in exported.files:
                    measured = evaluation.of(file.format)
                    rows.append(row(model, file.format, exported.path(file), file, measured.accuracy, measured.agreement))
        return rows

    def deployable(self, fmt: str) -> Deployable:
        """The pruned model's file in format `fmt`."""
        return next(d for d in self.deployables if d.model == "pruned" and d.format == fmt)


class Point(NamedTuple):
    """One point of a sweep: a target sparsity, and the fraction of channels removed first."""

    target: float
    channels: float = 0.0

    def label(self, spec: str = "g") -> str:
        """"0.8", or "0.8 + channels 0.5"; each number formatted by `spec` (".2f" in tables)."""
        return f"{self.target:{spec}}" + (f" + channels {self.channels:{spec}}" if self.channels else "")


class TargetResult(PruningOutcome):
    """What pruning to one point of a sweep gave, against the baseline."""

    target: float
    channel_fraction: float = 0.0  # of the channels removed before magnitude pruning (0: none)

    @property
    def point(self) -> Point:
        return Point(self.target, self.channel_fraction)


class StoppedTarget(BaseModel):
    """A search's trial whose prune-training stopped early: its validation accuracy was already out of
    the gate's reach, so no file was made of it."""

    model_config = ConfigDict(frozen=True)

    point: Point
    training: TrainedModel

    @property
    def val_accuracy(self) -> float:
        return self.training.final_val_accuracy


class Trial(BaseModel):
    """One trial of a search: the point proposed, and what became of it."""

    model_config = ConfigDict(frozen=True)

    number: int  # from 1
    point: Point
    outcome: Literal["completed", "repeat", "stopped", "failed"]  # repeat: a point proposed before, not run again
    val_accuracy: float | None = None  # the pruned Keras model's, at its last epoch (where it stopped, if it did)
    zip_bytes: int | None = None  # the point's smallest pruned file, zip-deflated
    stopped_after_epoch: int | None = None
