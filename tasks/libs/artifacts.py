"""What the stages store: one StoredArtifact type per stage output, and the inputs that name a stored file."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict

from pruneflow.tasks.core.store import StoredArtifact

if TYPE_CHECKING:
    pass
from typing import ClassVar, Literal

import numpy as np
from pydantic import computed_field

from pruneflow.tasks.libs.channels import ChannelPlan, LayerCost
from pruneflow.tasks.libs.models import (
    ModelFile,
    load_model,
)
from pruneflow.tasks.libs.selection import (
    GROUP_TITLES,
    PlannedLayer,
)
from pruneflow.tasks.libs.sparsity import DenseTensor, TensorSparsity, sparsity_table
from pruneflow.tasks.specs.formats import FormatName


class PreparedDataset(StoredArtifact):
    """A prepared dataset's folder and what it holds.

    The folder has manifest.parquet (filename, label, label_index, split, digest),
    labels.json, and one TFRecord file per split of decoded, resized uint8 images, so the
    later stages never decode a JPEG again.
    """

    classes: list[str]
    counts: dict[str, int]
    image_shape: tuple[int, int, int]
    warnings: list[str] = []

    @property
    def manifest(self) -> Path:
        return self.folder / "manifest.parquet"

    @property
    def labels(self) -> Path:
        return self.folder / "labels.json"

    def records(self, split: str) -> Path:
        return self.folder / f"{split}.tfrecord"


class SanityReport(StoredArtifact):
    """Per-tensor sparsity against each pruned layer's target (also in sanity.json), and every
    tensor left dense."""

    expected: float  # the schedule's final sparsity: the target of layers without their own
    tolerance: float
    tensors: list[TensorSparsity]
    dense: list[DenseTensor] = []
    structure: str = ""  # "2:4 (m_by_n)", "block 1x4", or "" for unstructured
    layers: list[PlannedLayer] = []  # the plan: every layer's group, weightless ones (Rescaling) included

    @property
    def failed(self) -> list[TensorSparsity]:
        return [tensor for tensor in self.tensors if not tensor.passed]

    def params(self) -> dict[str, int]:
        """Weights in each group, every group present."""
        counts = {group: 0 for group in GROUP_TITLES}
        counts["pruned"] = sum(t.size for t in self.tensors)
        for tensor in self.dense:
            counts[tensor.group] += tensor.size
        return counts

    def shares(self) -> dict[str, float]:
        """Each group's share of the model's weights: what pruning could reach is the pruned share."""
        counts = self.params()
        total = sum(counts.values())
        return {group: n / total if total else 0.0 for group, n in counts.items()}

    def table(self) -> str:
        return sparsity_table(self.tensors)

    def group_table(self) -> str:
        """One line per group: tensors, weights, share of the model's weights."""
        counts, shares = self.params(), self.shares()
        tensors = {group: sum(t.group == group for t in self.dense) for group in GROUP_TITLES}
        tensors["pruned"] = len(self.tensors)
        lines = [f"{'group':<36} {'tensors':>7} {'weights':>10} {'share':>7}"]
        for group, title in GROUP_TITLES.items():
            lines.append(f"{title:<36} {tensors[group]:>7} {counts[group]:>10} {shares[group]:>7.1%}")
        return "\n".join(lines)

    def layer_counts(self) -> str:
        """Layers per group, those left dense counted by class: '3 pruned; left dense by choice:
        Conv2D x1; TFMOT cannot prune: BatchNormalization x2, Rescaling x1'."""
        parts = [f"{sum(layer.group == 'pruned' for layer in self.layers)} pruned"]
        for group in ("dense_by_choice", "cannot_prune"):
            kinds: dict[str, int] = {}
            for layer in self.layers:
                if layer.group == group:
                    kinds[layer.kind] = kinds.get(layer.kind, 0) + 1
            if kinds:
                parts.append(f"{GROUP_TITLES[group]}: {', '.join(f'{k} x{n}' for k, n in sorted(kinds.items()))}")
        return "; ".join(parts)

    def dense_table(self) -> str:
        """One line per tensor left dense: its layer, weight, size, group and reason."""
        lines = [f"{'layer':<48} {'weight':<18} {'size':>9}  why"]
        for t in self.dense:
            lines.append(f"{t.layer:<48} {t.weight:<18} {t.size:>9}  {GROUP_TITLES[t.group]}: {t.reason}")
        return "\n".join(lines)


class ModelSize(BaseModel):
    """One model file's size, and the bytes its non-zero weights need at the least."""

    model_config = ConfigDict(frozen=True)

    file: str  # its name in the size artifact's folder
    raw_bytes: int
    zip_bytes: int
    xz_bytes: int
    weights: int
    nonzero_weights: int

    @computed_field
    @property
    def floor_bytes(self) -> int:
        """Non-zero weights x 4 bytes (float32): what no encoding of the values goes below."""
        return self.nonzero_weights * 4


class SizeReport(StoredArtifact):
    """Baseline against pruned; ratios are baseline / pruned (higher is smaller)."""

    baseline: ModelSize
    pruned: ModelSize

    @computed_field
    @property
    def zip_ratio(self) -> float:
        return self.baseline.zip_bytes / self.pruned.zip_bytes

    @computed_field
    @property
    def xz_ratio(self) -> float:
        return self.baseline.xz_bytes / self.pruned.xz_bytes

    @computed_field
    @property
    def raw_ratio(self) -> float:
        return self.baseline.raw_bytes / self.pruned.raw_bytes


class WeightTensor(BaseModel):
    """A constant tensor of two or more dimensions in a TFLite file, and its zeros."""

    model_config = ConfigDict(frozen=True)

    name: str
    shape: list[int]
    size: int
    zeros: int
    stored_sparse: bool


class FloatFallback(BaseModel):
    """Which layers an int8_fallback file keeps in float (pruneflow.tasks.libs.float_fallback)."""

    model_config = ConfigDict(frozen=True)

    rule: str  # how they were chosen: "auto", "count 2", or the patterns
    layers: list[str]  # Keras layer paths, in the order chosen (auto: most given back first)
    tensors: list[str]  # the ops' output tensors in the file
    accuracy: float | None = None  # the file's validation accuracy (auto only)
    reference: float | None = None  # the Keras model's (auto only)
    reached: bool | None = None  # whether auto got within its loss (if not, every layer it could is in float)


class ExportedFile(BaseModel):
    """One TFLite file of an export, its sizes and its weights."""

    model_config = ConfigDict(frozen=True)

    format: FormatName
    file: str  # its name in the export's folder
    raw_bytes: int
    zip_bytes: int
    xz_bytes: int
    weights: list[WeightTensor]
    # The pruned model's kernels as found in this file (empty for a dense model's export).
    sparsity: list[TensorSparsity] = []
    fallback: FloatFallback | None = None  # the int8_fallback file's float layers, and why


CALIBRATION_PER_CLASS = 10  # fewer int8 calibration images of a class than this is a named warning


class Calibration(BaseModel):
    """The training images that calibrated a model's int8 files: how many of each class were
    drawn (pruneflow.tasks.libs.dataset.calibration_draw), of how many the train split has."""

    model_config = ConfigDict(frozen=True)

    seed: int
    per_class: dict[str, int]
    available: dict[str, int]

    @property
    def images(self) -> int:
        return sum(self.per_class.values())

    def describe(self) -> str:
        counts = sorted(set(self.per_class.values()))
        spread = f"{counts[0]}" if len(counts) == 1 else f"{counts[0]} to {counts[-1]}"
        return (f"int8 calibrated on {self.images} training images, {spread} per class of {len(self.per_class)} "
                f"(a class-balanced draw, seed {self.seed})")

    def warning(self) -> str:
        """What to do when a class has fewer than CALIBRATION_PER_CLASS images in the draw; "" otherwise."""
        short = [name for name, n in self.per_class.items() if n < CALIBRATION_PER_CLASS]
        if not short:
            return ""
        shown = ", ".join(f"{name!r} {self.per_class[name]}" for name in short[:5])
        more = f" and {len(short) - 5} more" if len(short) > 5 else ""
        scarce = [name for name in short if self.available[name] < CALIBRATION_PER_CLASS]
        remedy = (f"raise export.representative_images to at least {CALIBRATION_PER_CLASS * len(self.per_class)}"
                  if not scarce else f"add training images of {', '.join(repr(n) for n in scarce[:5])}")
        return (f"int8 calibration has fewer than {CALIBRATION_PER_CLASS} images of {len(short)} class(es) "
                f"({shown}{more}): activation ranges may not cover them; {remedy}")


class ExportedModels(StoredArtifact):
    """The TFLite files of one model, one per format (also listed in export.json)."""

    files: list[ExportedFile]
    calibration: Calibration | None = None  # None when no file is int8

    def path(self, exported: ExportedFile) -> Path:
        return self.folder / exported.file


class LayerError(BaseModel):
    """One quantized op's int8 error, the mean over the images of each image's figure
    (pruneflow.tasks.libs.quantization_error)."""

    model_config = ConfigDict(frozen=True)

    layer: str  # the Keras layer's path (nested models walked in place), or the op's tensor name if none matches
    op: str  # the TFLite op, e.g. CONV_2D
    tensor: str  # the op's output tensor in the file: what a float fallback names
    elements: int
    rmse: float  # RMSE of the dequantized output against the float one, over the float output's standard deviation
    cosine: float  # cosine similarity of the two


class QuantizationErrors(StoredArtifact):
    """The int8 error of each quantized op of the pruned model, worst first (also in
    layer_errors.csv); none when no int8 file is made by post-training quantization."""

    layers: list[LayerError]
    images: int  # validation images measured

    def worst(self, count: int = 3) -> list[LayerError]:
        return self.layers[:count]


class FileEvaluation(BaseModel):
    """One TFLite file's figures on the test split."""

    model_config = ConfigDict(frozen=True)

    format: str
    accuracy: float
    agreement: float  # share of test images where its top-1 class is the Keras model's
    examples: int


class ExportEvaluation(StoredArtifact):
    """Every exported file of one model, evaluated (also in evaluation.json)."""

    files: list[FileEvaluation]

    def of(self, fmt: str) -> FileEvaluation:
        return next(evaluation for evaluation in self.files if evaluation.format == fmt)


class Timing(BaseModel):
    """One model file's latency on a batch of images, in milliseconds."""

    model_config = ConfigDict(frozen=True)

    model: Literal["baseline", "pruned", "champion"]  # champion: the promoted file (pruneflow.tasks.decide.champion)
    format: str  # KERAS (the Keras model, as a tf.function) or an export format
    median_ms: float
    p90_ms: float
    runs: int
    batch: int = 1


class LatencyReport(StoredArtifact):
    """Every model file's latency, measured side by side (also in latency.json)."""

    machine: str
    threads: int
    timings: list[Timing]
    sparse_kernels: str  # whether XNNPACK's sparse kernels can apply to the pruned model, and why not
    notes: list[str] = []  # how a file ran, where not as usual (a TFLite file XNNPACK cannot prepare)

    def of(self, model: str, fmt: str) -> Timing:
        """The batch-1 timing of `model`'s file in format `fmt` (KERAS for the Keras model)."""
        return next(t for t in self.timings if t.model == model and t.format == fmt and t.batch == 1)

    def batched(self, model: str, fmt: str) -> Timing | None:
        """The timing of `model`'s file in format `fmt` at the larger batch, if it was timed at one."""
        return next((t for t in self.timings if t.model == model and t.format == fmt and t.batch > 1), None)


class Evaluation(StoredArtifact):
    """A model's figures on the test split (also in the folder's evaluation.json)."""

    accuracy: float
    loss: float
    examples: int


class TrainedModel(StoredArtifact):
    """The wrapped model at the end of prune-training, with its training record."""

    epochs: int
    resumed_from_epoch: int
    steps: int
    seconds: float
    final_val_accuracy: float
    stopped_after_epoch: int | None = None  # a search's trial stopped early (prune_train's StopRule)
    reference_val_accuracy: float | None = None  # the unpruned model's, where a stop rule compared with it

    @property
    def wrapped_model(self) -> Path:
        return self.folder / "wrapped.h5"

    @property
    def history(self) -> Path:
        return self.folder / "history.json"

    @property
    def tensorboard_logs(self) -> Path:
        return self.folder / "logs"


class StoredModel(StoredArtifact):
    """An artifact whose folder holds a model that later stages read (MODEL_FILE)."""

    MODEL_FILE: ClassVar[str]

    @property
    def model(self) -> Path:
        return self.folder / self.MODEL_FILE

    @property
    def file(self) -> ModelFile:
        """The model as a later stage's input, known by this artifact's digest."""
        return ModelFile(path=self.model, digest=self.digest, trust_code=True)


class TranslatedModel(StoredModel):
    """A Keras 3 baseline rebuilt in tf_keras (pruneflow.tasks.libs.keras3), checked on the run's
    own images: what every later stage reads as the baseline."""

    MODEL_FILE = "baseline.h5"
    keras_version: str  # the Keras that wrote the baseline file
    max_abs_diff: float  # between the two models' outputs on the checked images
    images: int


class NarrowedModel(StoredModel):
    """The baseline with whole channels removed (pruneflow.tasks.libs.channels): which, and each
    layer's parameters and FLOPs before and after."""

    MODEL_FILE = "narrowed.h5"
    plan: ChannelPlan
    before: list[LayerCost]
    after: list[LayerCost]

    def totals(self, field: Literal["params", "flops"]) -> tuple[int, int]:
        """The baseline's and the narrowed model's parameters, or FLOPs per image."""
        return sum(getattr(c, field) for c in self.before), sum(getattr(c, field) for c in self.after)

    @computed_field
    @property
    def params_ratio(self) -> float:
        """The narrowed model's parameters over the baseline's."""
        before, after = self.totals("params")
        return after / max(1, before)

    @computed_field
    @property
    def flops_ratio(self) -> float:
        """The narrowed model's FLOPs per image over the baseline's."""
        before, after = self.totals("flops")
        return after / max(1, before)


class StrippedModel(StoredModel):
    """The exportable model with the pruning wrappers removed."""

    MODEL_FILE = "pruned.h5"
    max_abs_diff: float


class QuantizedModel(StoredArtifact):
    """The quantization-aware model (`qat.h5`, load it inside TFMOT's quantize_scope), or nothing."""

    trained: bool
    seconds: float = 0.0
    final_val_accuracy: float | None = None

    @property
    def model(self) -> Path:
        return self.folder / "qat.h5"

    def load(self):
        return load_model(self.model, quantization_wrappers=True)


class LayerSensitivity(StoredArtifact):
    """One layer pruned alone: validation accuracy at each sparsity, and with the layer dense."""

    layer: str
    weights: int  # the layer's prunable weights
    sparsities: list[float]
    accuracies: list[float]
    dense_accuracy: float

    def drops(self) -> list[float]:
        """Accuracy lost at each sparsity, in points (percent); negative when it gained."""
        return [100.0 * (self.dense_accuracy - accuracy) for accuracy in self.accuracies]

    def drop_at(self, sparsity: float) -> float:
        """The drop at `sparsity`, linear between the measured ones (none at 0)."""
        return float(np.interp(sparsity, [0.0, *self.sparsities], [0.0, *self.drops()]))


class ChampionEvaluation(StoredArtifact):
    """The champion's deployable file measured in this run."""

    version: str  # the promoted version folder it came from
    format: str
    accuracy: float
    zip_bytes: int
    latency_ms: float
    machine: str
    examples: int


class Champion(BaseModel):
    """The promoted version's deployable file, as a stage input."""

    model_config = ConfigDict(frozen=True)

    file: ModelFile
    format: str
    version: str  # the promoted version folder's name
