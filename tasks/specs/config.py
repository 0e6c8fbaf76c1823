"""The run configuration: one frozen, strict model per run, loaded from YAML."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    model_validator,
)

from pruneflow.tasks.core.errors import PruneflowError
from pruneflow.tasks.specs.formats import FORMATS, KERAS3, ExportFormat, FormatName, formats_described, made_by


def _resolve_path(value: Path, info: ValidationInfo) -> Path:
    """Make a relative path absolute against the config file's folder, when loaded from one."""
    base = (info.context or {}).get("base_dir")
    if base is not None and not value.is_absolute():
        value = Path(base) / value
    return value


ConfigPath = Annotated[Path, AfterValidator(_resolve_path)]
# TFMOT's own range: sparsity 1.0 would zero a whole tensor.
Sparsity = Annotated[float, Field(ge=0.0, lt=1.0)]


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ImageShape(_Strict):
    """The size images are decoded and resized to: what the prepared dataset holds."""

    height: int = Field(gt=0)
    width: int = Field(gt=0)
    channels: Literal[1, 3]


class DatasetConfig(_Strict):
    """Where the images are and how they are fed to the model."""

    train_csv: ConfigPath = Field(
        description="The training split: a CSV with the header filename,label and one row per JPEG, "
        "filenames relative to the CSV's folder. Its sorted labels are the classes."
    )
    val_csv: ConfigPath = Field(description="The validation split, same columns: validation accuracy during fine-tuning.")
    test_csv: ConfigPath = Field(
        description="The test split, same columns: every reported accuracy is measured on it, in CSV order."
    )
    image_height: int = Field(gt=0, description="Height in pixels each image is resized to; the model's input height.")
    image_width: int = Field(gt=0, description="Width in pixels each image is resized to; the model's input width.")
    channels: Literal[1, 3] = Field(
        3, description="1 for greyscale, 3 for RGB: each JPEG is decoded to this many channels."
    )
    batch_size: int = Field(
        32, gt=0, description="Images per step of fine-tuning and of evaluation; a run has "
        "ceil(train images / batch_size) steps per epoch."
    )
    shuffle_seed: int = Field(42, description="Seed of the training split's shuffle; val and test are never shuffled.")
    augment: bool = Field(
        False, description="Random left-right flips of the training images (never val or test images)."
    )

    @property
    def shape(self) -> ImageShape:
        return ImageShape(height=self.image_height, width=self.image_width, channels=self.channels)


class ModelConfig(_Strict):
    """The unpruned model to start from."""

    baseline: ConfigPath = Field(
        description="The trained model, saved with tf_keras as .h5 or .keras: Sequential or functional "
        "(nested models too), taking images scaled to [0, 1], with one output per class (softmax or logits)."
    )
    trust_custom_code: bool = Field(
        False, description="Load a baseline whose loading runs code (Lambda layers, custom classes). A run from "
        "a deployment may set it only where the worker sets PRUNEFLOW_ALLOW_CUSTOM_CODE=1."
    )

    @model_validator(mode="after")
    def _known_format(self) -> ModelConfig:
        if self.baseline.suffix not in (".h5", ".keras"):
            raise ValueError(f"baseline {self.baseline} must be a .h5 or .keras file")
        return self


class _ScheduleSteps(_Strict):
    begin_step: int = Field(0, ge=0, description="First training step at which pruning may happen (steps count from 1).")
    frequency: int = Field(
        1, ge=1, description="Prune every `frequency` steps. A schedule under which no pruning step falls "
        "inside the run (TFMOT's default of 100, in a short run) is refused."
    )


class ConstantSchedule(_ScheduleSteps):
    """Prune to one sparsity at every pruning step."""

    model_config = ConfigDict(frozen=True, extra="forbid", title="Constant sparsity")

    kind: Literal["constant"] = Field("constant", description="Schedule type.")
    target_sparsity: Sparsity = Field(description="Fraction of each prunable tensor set to zero, in [0, 1).")
    end_step: int | None = Field(
        None, ge=-1, description="Last pruning step; -1 prunes until the end of training; omitted: the last step of "
        "the run (steps per epoch x epochs) at which pruning happens (begin_step plus a multiple of frequency)."
    )

    @property
    def final_sparsity(self) -> float:
        return self.target_sparsity

    @model_validator(mode="after")
    def _ordered_steps(self) -> ConstantSchedule:
        if self.end_step is not None and self.end_step != -1 and self.end_step < self.begin_step:
            raise ValueError(
                f"end_step ({self.end_step}) is before begin_step ({self.begin_step}); "
                "use -1 to prune until the end of training"
            )
        return self


class PolynomialDecaySchedule(_ScheduleSteps):
    """Raise sparsity from initial to final along a polynomial, as in Zhu & Gupta (2017)."""

    model_config = ConfigDict(frozen=True, extra="forbid", title="Polynomial decay")

    kind: Literal["polynomial_decay"] = Field("polynomial_decay", description="Schedule type.")
    initial_sparsity: Sparsity = Field(0.0, description="Sparsity at begin_step, in [0, 1).")
    final_sparsity: Sparsity = Field(description="Sparsity reached at end_step and kept after, in [0, 1).")
    end_step: int | None = Field(
        None, ge=0, description="Step at which final_sparsity is reached: at most the run's last step, and "
        "begin_step plus a multiple of frequency (or final_sparsity is never reached, and the run is refused); "
        "omitted: the last such step of the run, so that final_sparsity is reached."
    )
    power: float = Field(3.0, gt=0, description="Exponent of the decay: 3 prunes fast early, then slowly.")

    @model_validator(mode="after")
    def _ordered(self) -> PolynomialDecaySchedule:
        if self.initial_sparsity > self.final_sparsity:
            raise ValueError(
                f"initial_sparsity ({self.initial_sparsity}) is above final_sparsity ({self.final_sparsity})"
            )
        if self.end_step is not None and self.end_step <= self.begin_step:
            raise ValueError(f"end_step ({self.end_step}) must be after begin_step ({self.begin_step})")
        return self


Schedule = Annotated[Union[ConstantSchedule, PolynomialDecaySchedule], Field(discriminator="kind")]


class TrainingConfig(_Strict):
    """How the pruned model is fine-tuned."""

    epochs: int = Field(gt=0, description="Epochs of fine-tuning under the pruning schedule.")
    optimizer: Literal["adam", "sgd", "rmsprop"] = Field("adam", description="Fine-tuning optimizer.")
    learning_rate: float = Field(
        1e-4, gt=0, description="Fine-tuning learning rate; lower it if the loss becomes NaN, which stops the run."
    )
    retries: int = Field(
        2, ge=0, description="Retries of prune-training after a transient failure (out of memory, I/O, a lost "
        "device), each resuming after the last complete epoch; never after a user error."
    )
    retry_delay_seconds: float = Field(
        10.0, ge=0, description="Seconds before the first retry; doubled for each later one."
    )
    pruning_policy: Literal["all_layers", "xnnpack_latency"] = Field(
        "all_layers", description="all_layers: prune every Conv and Dense kernel. xnnpack_latency: TFMOT's "
        "PruneForLatencyOnXNNPack, which prunes only the 1x1 convolutions, the ones XNNPACK's sparse kernels "
        "can speed up; it needs a MobileNet-like model (a ZeroPadding2D then a 3x3 stride-2 convolution of 3 "
        "channels first, a GlobalAveragePooling2D with keepdims last) and is refused, with TFMOT's reason, "
        "for any other.",
    )


class LayerSelection(_Strict):
    """Which layers are pruned, to what sparsity, in what structure. A pattern is a shell-style
    pattern (*, ?, [..], case-sensitive) matched against a layer's path (nested models' names
    first: backbone/conv1), its name, or its class name (Conv2D)."""

    include: list[str] = Field(
        [], description="Prune only the layers matching one of these patterns; empty: every layer TFMOT can prune. "
        "A pattern that matches no layer TFMOT can prune is refused, naming it.",
    )
    exclude: list[str] = Field(
        [], description="Leave the layers matching one of these patterns dense (after include). A pattern that "
        "matches no layer is refused, naming it.",
    )
    keep_first_conv: bool = Field(
        False, description="Leave the model's first convolution dense: it sees the raw image and holds few weights.",
    )
    keep_classifier: bool = Field(False, description="Leave the model's last Dense layer (the classifier) dense.")
    sparsity: dict[str, Sparsity] = Field(
        {}, description="Per-layer target sparsity: pattern -> sparsity, the first matching pattern wins; other "
        "pruned layers take the schedule's. `pruneflow sensitivity` proposes these. A pattern that matches no "
        "pruned layer is refused, naming it.",
    )
    m_by_n: tuple[int, int] | None = Field(
        None, description="Structured sparsity [m, n] (TFMOT's sparsity_m_by_n): m of every n consecutive weights "
        "along the input-channel axis are zero, e.g. [2, 4], which sparse tensor cores run fast. The sparsity is "
        "then m/n, so the schedule's must be m/n. Each pruned layer's input channels must be a multiple of n.",
    )
    block_size: tuple[int, int] | None = Field(
        None, description="Block sparsity [rows, columns] (TFMOT's block_size): weights are zeroed in whole "
        "blocks of a 2-D kernel: Dense layers only (TFMOT refuses convolution kernels, 1x1 ones included).",
    )

    @model_validator(mode="after")
    def _one_structure(self) -> LayerSelection:
        if self.m_by_n is not None:
            m, n = self.m_by_n
            if not 0 < m < n:
                raise ValueError(f"m_by_n {list(self.m_by_n)} must be [m, n] with 0 < m < n, e.g. [2, 4]")
            if self.block_size is not None:
                raise ValueError("m_by_n and block_size are two structures: set one of them")
            if self.sparsity:
                raise ValueError("m_by_n fixes every pruned layer's sparsity at m/n: per-layer sparsity cannot be set")
        if self.block_size is not None and min(self.block_size) < 1:
            raise ValueError(f"block_size {list(self.block_size)} must be two positive numbers of rows and columns")
        return self

    @property
    def structured_sparsity(self) -> float | None:
        """The sparsity an m_by_n structure gives (None without one)."""
        return None if self.m_by_n is None else self.m_by_n[0] / self.m_by_n[1]


ChannelFraction = Annotated[float, Field(ge=0.0, lt=1.0)]


class ChannelPruningConfig(_Strict):
    """Whole output channels removed from convolutions and Dense layers before magnitude pruning:
    the model itself becomes narrower, so it is smaller and faster in every runtime. Which layers
    take part follows `layers` (include, exclude, keep_first_conv); the classifier's outputs are
    never removed. Channels joined by Add or Multiply (residual blocks, squeeze-excite) go
    together or stay whole."""

    fraction: ChannelFraction = Field(
        description="Fraction of each layer's output channels removed, rounded down (or as round_to says), at least one kept; e.g. 0.5.",
    )
    criterion: Literal["l1", "l2", "bn_scale"] = Field(
        "l1", description="How channels are ranked, the weakest removed: the L1 or L2 norm of their kernel weights, "
        "or the scale of the BatchNormalization after them (bn_scale; the L1 norm where none follows).",
    )
    layers: dict[str, ChannelFraction] = Field(
        {}, description="Per-layer fraction: pattern -> fraction (0 keeps the layer whole), matched against the "
        "path, name or class of each layer with output channels; channels pruned together take the smallest. A "
        "pattern that matches no such layer is refused, naming it.",
    )
    round_to: int = Field(
        1, ge=1, description="Each pruned group keeps a multiple of this many channels, the one nearest to what the "
        "fraction leaves (a group of this many or fewer stays whole). Kernels compute channels in tiles (XNNPACK's "
        "float kernels 8 or 16 on x86, 8 on Arm; GPU tensor cores 8): 34 channels can cost what 48 do. 8 or 16 "
        "buys more speed per channel removed; 1: the fraction exactly.",
    )


class ChannelSpec(_Strict):
    """What the prune_channels stage does: the config's channel_pruning and the parts of the layer
    selection it follows (RunConfig.channel_spec), not the per-layer sparsity or the structure,
    which only prune_train reads."""

    fraction: ChannelFraction
    criterion: Literal["l1", "l2", "bn_scale"]
    layers: dict[str, ChannelFraction]
    include: list[str]
    exclude: list[str]
    keep_first_conv: bool
    round_to: int = Field(1, ge=1)
    multiple: int = Field(1, ge=1)  # each group keeps a multiple of this many channels: n of layers.m_by_n

    @property
    def selection(self) -> LayerSelection:
        return LayerSelection(include=self.include, exclude=self.exclude, keep_first_conv=self.keep_first_conv)


class TrainingSpec(_Strict):
    """What prune-training does with the data, the baseline and the schedule: the part of the
    config its result depends on (RunConfig.training_spec). The stage receives only this, so its
    key covers every field it can read. Retries, which do not change the result, are not in it."""

    epochs: int = Field(gt=0)
    optimizer: Literal["adam", "sgd", "rmsprop"]
    learning_rate: float = Field(gt=0)
    batch_size: int = Field(gt=0)
    shuffle_seed: int
    augment: bool
    seed: int
    pruning_policy: Literal["all_layers", "xnnpack_latency"]
    layers: LayerSelection

    def steps_per_epoch(self, n_train: int) -> int:
        return math.ceil(n_train / self.batch_size)


IOType = Literal["float32", "int8", "uint8"]


class ExportConfig(_Strict):
    """The deployable files made of the pruned model (and of the baseline, for comparison), and
    how their latency is measured."""

    formats: list[ExportFormat] = Field(
        ["float32", "float32_sparse", "int8", "int8_sparse"],
        description=f"Files to make: {formats_described()}. The baseline is exported in the dense counterpart of "
        "each, for comparison. An empty list exports nothing: the Keras .h5 is then the only deployable file.",
    )
    representative_images: int = Field(
        100, gt=0, description="Training images (a fixed sample of the train split) that calibrate int8 "
        "quantization: the range of every activation is measured on them.",
    )
    int8_input_type: IOType = Field(
        "int8", description="Input type of the int8 files: int8 or uint8 (the caller quantizes images with the "
        "file's own scale and zero point), or float32 (the file quantizes them itself).",
    )
    int8_output_type: IOType = Field("int8", description="Output type of the int8 files, as int8_input_type.")
    layer_errors: bool = Field(
        True, description="Measure each layer's int8 error (the quantization_error stage: a debug model run on "
        "validation images) whenever an int8 file is made by post-training quantization. int8_fallback needs it.",
    )
    float_fallback: Annotated[int, Field(ge=0)] | Literal["auto"] | list[str] = Field(
        "auto", description="The int8_fallback format's layers left in float: a count (the layers int8 hurts most, "
        "by quantization_error's table), layer names or patterns, or auto: as few layers as keep the file's "
        "validation accuracy within fallback_max_loss points of the Keras model's, ranked by how close each one "
        "alone in float brings the outputs to the Keras model's (0, 1, 2, 4, ... tried, then halved back).",
    )
    fallback_max_loss: float = Field(
        0.5, ge=0, description="For float_fallback auto: the validation accuracy, in points, the int8_fallback file "
        "may lose against the Keras model it is converted from.",
    )
    qat_epochs: int = Field(
        1, ge=1, description="Epochs of pruning-preserving quantization-aware training (TFMOT's "
        "Default8BitPrunePreserveQuantizeScheme) of the pruned model, for the int8_qat formats only.",
    )
    qat_learning_rate: float = Field(
        1e-5, gt=0, description="Learning rate of quantization-aware training (with training.optimizer): low, "
        "since it starts from the fine-tuned model.",
    )
    latency_runs: int = Field(
        200, ge=5, description="Timed batch-1 invocations of each model file, after the warm-up; the files take "
        "turns, a few invocations at a time. The median and the 90th percentile are reported.",
    )
    latency_warmup: int = Field(20, ge=0, description="Untimed invocations of each model file before the timed ones.")
    latency_batch: int = Field(
        32, ge=1, description="A second batch size each model file is timed at, besides 1 (where fixed costs "
        "dominate a small model), as a server batching requests runs it; 1: batch 1 only.",
    )
    latency_batch_runs: int = Field(
        50, ge=5, description="Timed invocations of each model file at latency_batch, after latency_warmup untimed ones.",
    )
    threads: int = Field(
        1, ge=1, description="CPU threads of each file's runtime (LiteRT with XNNPACK, onnxruntime) when latency "
        "is measured. The Keras models, timed for reference, use TensorFlow's own thread settings.",
    )

    @model_validator(mode="after")
    def _formats_fit(self) -> ExportConfig:
        if len(set(self.formats)) != len(self.formats):
            raise ValueError(f"formats {self.formats} repeat a format; list each once")
        if "int8_fallback" in self.formats and not self.layer_errors:
            raise ValueError("int8_fallback chooses its float layers from the layer errors: set layer_errors true")
        return self


class FallbackSpec(_Strict):
    """How the int8_fallback file chooses its float layers (RunConfig.fallback_spec)."""

    layers: int | Literal["auto"] | list[str]
    max_loss: float


class ExportSpec(_Strict):
    """What the export stage reads (RunConfig.export_spec): the latency settings are not in it."""

    formats: tuple[FormatName, ...]
    representative_images: int = Field(gt=0)
    int8_input_type: IOType
    int8_output_type: IOType

    def dense(self) -> ExportSpec:
        """What a dense model (the baseline) is exported as: each format's dense counterpart, once."""
        return self.model_copy(update={"formats": tuple(dict.fromkeys(FORMATS[f].dense for f in self.formats))})

    def made_by(self, maker: str) -> ExportSpec:
        """The part of this spec that one conversion stage makes (its formats only, so that its key
        does not change with the others')."""
        return self.model_copy(update={"formats": made_by(maker, self.formats)})

    def post_training_int8(self) -> ExportSpec:
        """What the quantization_error stage measures: the int8 format, if this spec makes a TFLite
        int8 file by post-training quantization (int8, int8_sparse or int8_fallback, whose float layers
        it chooses from); no format otherwise."""
        ptq = any(FORMATS[f].int8 and FORMATS[f].made_by in ("tflite", "fallback") and FORMATS[f].source == "stripped"
                  and not FORMATS[f].int16_activations for f in self.formats)
        return self.model_copy(update={"formats": ("int8",) if ptq else ()})

    def without_keras3(self) -> ExportSpec:
        """This spec without the Keras 3 file (a channel-pruned model has shapes the baseline's Keras 3
        architecture does not)."""
        return self.model_copy(update={"formats": tuple(f for f in self.formats if f != KERAS3)})

    def with_keras3(self) -> ExportSpec:
        """This spec and the Keras 3 file, made for a baseline that Keras 3 wrote."""
        return self.model_copy(update={"formats": tuple(dict.fromkeys((*self.formats, KERAS3)))})

    @property
    def wants_qat(self) -> bool:
        """Whether a format is converted from quantize_train's quantization-aware model."""
        return any(FORMATS[fmt].source == "qat" for fmt in self.formats)


class QATSpec(_Strict):
    """What quantization-aware training reads (RunConfig.qat_spec): the data feed and seed of the
    fine-tuning, its optimizer, and the export's QAT settings."""

    epochs: int = Field(gt=0)
    learning_rate: float = Field(gt=0)
    optimizer: Literal["adam", "sgd", "rmsprop"]
    batch_size: int = Field(gt=0)
    shuffle_seed: int
    augment: bool
    seed: int


class LatencySpec(_Strict):
    """How latency is measured (RunConfig.latency_spec)."""

    runs: int = Field(ge=5)
    warmup: int = Field(ge=0)
    threads: int = Field(ge=1)
    batch: int = Field(1, ge=1)  # a second batch size timed, besides 1; 1: none
    batch_runs: int = Field(50, ge=5)


class SearchConfig(_Strict):
    """A sweep that searches instead of listing its points: Optuna proposes each trial's point."""

    trials: int = Field(
        12, ge=2, description="Points the search prunes, each through the run's graph (at most the grid's points). "
        "A point proposed again is answered from its first trial and does not count.",
    )
    startup_fraction: float = Field(
        0.25, gt=0.0, le=1.0, description="Share of the trials drawn at random before the sampler (multi-objective "
        "TPE) models the results; at least one trial.",
    )
    sparsity: tuple[Sparsity, Sparsity] = Field(
        (0.5, 0.95), description="Lowest and highest target sparsity a trial may take, both included.",
    )
    channel_fraction: tuple[ChannelFraction, ChannelFraction] | None = Field(
        None, description="Lowest and highest fraction of channels a trial may remove first (channel_pruning's "
        "criterion and per-layer fractions kept); unset: none removed.",
    )
    step: float = Field(
        0.05, gt=0.0, le=0.5, description="Grid the proposals are rounded to: a point proposed twice is the same "
        "cached graph, not a new training.",
    )
    stop_after_epochs: int | None = Field(
        2, gt=0, description="Epoch at whose end a trial's validation accuracy is checked: a trial already more than "
        "sweep.max_accuracy_drop + stop_margin points under the unpruned model's stops there, its remaining epochs "
        "and files not made. null: every trial trains to the end.",
    )
    stop_margin: float = Field(
        5.0, ge=0.0, description="Points of validation accuracy beyond max_accuracy_drop a trial may lose by "
        "stop_after_epochs and go on: fine-tuning recovers much of what the early epochs lose (the demo's 0.95 "
        "went from 8.8 points under at epoch 2 to 2.7 at epoch 8), so only a trial this far out is hopeless.",
    )
    seed: int = Field(0, description="Seed of the sampler: the same search on the same results proposes the same points.")

    @model_validator(mode="after")
    def _ranges(self) -> SearchConfig:
        for name in ("sparsity", "channel_fraction"):
            low_high = getattr(self, name)
            if low_high is not None and low_high[0] > low_high[1]:
                raise ValueError(f"{name} {list(low_high)}: the lowest value comes first")
        return self


class SweepConfig(_Strict):
    """A sweep: one baseline pruned to several sparsities, and the gate that picks one to promote."""

    channel_fractions: list[ChannelFraction] = Field(
        [], description="Fractions of channels removed (channel_pruning's fraction, its criterion and per-layer "
        "fractions kept), each combined with every target; 0 removes none. Empty: the config's channel_pruning, "
        "if any, at every target. A point with channels removed may be promoted below min_sparsity, 0 included: "
        "its gain is in speed.",
    )
    targets: list[Sparsity] = Field(
        [0.5, 0.7, 0.8, 0.9, 0.95], min_length=1,
        description="Target sparsities, each pruned from the baseline under the run's schedule, its final sparsity "
        "set to the target. Layers with their own layers.sparsity keep it at every target.",
    )
    max_accuracy_drop: float = Field(
        1.0, ge=0.0, le=100.0,
        description="Largest drop in test accuracy from the baseline Keras model's that a promoted file may have, in "
        "points (percent), its own accuracy measured on the file itself (in its runtime for an exported file); a "
        "drop exactly this large passes.",
    )
    min_sparsity: Sparsity = Field(0.5, description="Smallest target sparsity worth promoting (included).")
    max_parallel: int = Field(
        1, ge=1, description="Targets pruned at once: the number of Dask workers, or threads of one process "
        "without Dask (keep 1 there: trainings in one process share TensorFlow's state)."
    )
    search: SearchConfig | None = Field(
        None, description="Search the points with Optuna instead of listing them: targets and channel_fractions are "
        "then unused; the result is the Pareto front of test accuracy against zip-deflated size. Unset: the grid.",
    )
    champion_max_accuracy_loss: float = Field(
        0.5, ge=0.0, le=100.0, description="Largest loss of test accuracy, in points, of the gate's choice (the "
        "challenger) against the promoted file (the champion), both measured in this run on its test split.",
    )
    champion_max_relative_accuracy_loss: float = Field(
        0.01, ge=0.0, le=1.0, description="Largest loss of test accuracy against the champion as a share of the "
        "champion's accuracy (0.01: 1 %); the challenger must keep within both this and champion_max_accuracy_loss.",
    )
    champion_min_size_gain: float = Field(
        0.0, ge=0.0, lt=1.0, description="Share of the champion's zip-deflated size that the challenger must save "
        "to count as smaller (0: any byte).",
    )
    champion_min_size_gain_bytes: int = Field(
        0, ge=0, description="Bytes (zip-deflated) the challenger must save to count as smaller, as well.",
    )
    champion_min_speedup: float = Field(
        0.1, ge=0.0, lt=1.0, description="Share of the champion's batch-1 latency the challenger must save to count "
        "as faster (0.1: 10 %, above the noise of a shared machine); compared only when both were timed on the same "
        "kind of machine. A challenger that holds its accuracy and is smaller or faster replaces the champion.",
    )

    @model_validator(mode="after")
    def _distinct_targets(self) -> SweepConfig:
        if len(set(self.targets)) != len(self.targets):
            raise ValueError(f"targets {self.targets} repeat a sparsity; list each once")
        if len(set(self.channel_fractions)) != len(self.channel_fractions):
            raise ValueError(f"channel_fractions {self.channel_fractions} repeat a fraction; list each once")
        return self


class RegistryConfig(_Strict):
    """Where sweeps log their runs and register their promotions (MLflow); nothing without a tracking URI."""

    tracking_uri: str | None = Field(
        None, min_length=1,
        description="MLflow tracking server (http://127.0.0.1:5000) that also holds the model registry; unset: no "
        "registry, nothing is logged. Needs the `registry` extra (pip install 'pruneflow[registry]').",
    )
    experiment: str = Field("pruneflow", min_length=1, description="MLflow experiment each sweep logs a run in.")
    model_name: str = Field(
        "pruneflow", min_length=1,
        description="Registered model each promotion adds a version to; its `champion` alias marks the promoted one.",
    )


class SensitivityConfig(_Strict):
    """Used by `pruneflow sensitivity` only: how far each layer is pruned alone."""

    sparsities: list[Sparsity] = Field(
        [0.3, 0.5, 0.7, 0.8, 0.9, 0.95], min_length=1,
        description="Sparsities each selected layer is pruned to alone, by magnitude and without fine-tuning, its "
        "validation accuracy measured at each. The proposal never goes past the highest.",
    )

    @model_validator(mode="after")
    def _ascending(self) -> SensitivityConfig:
        if sorted(set(self.sparsities)) != self.sparsities:
            raise ValueError(f"sparsities {self.sparsities} must be ascending, each listed once")
        return self


def _schedule_as_choice(schema: dict) -> None:
    """Publish the schedule as `anyOf`, which Prefect's UI form renders as a choice of type.

    Validation still uses the discriminated union (one clear error per field); only the JSON
    schema that the UI reads changes.
    """
    pruning = schema["properties"]["pruning"]
    pruning["anyOf"] = pruning.pop("oneOf")
    pruning.pop("discriminator", None)


class RunConfig(_Strict):
    """Everything one pruning run needs: the flow's only parameter."""

    model_config = ConfigDict(frozen=True, extra="forbid", json_schema_extra=_schedule_as_choice)

    dataset: DatasetConfig = Field(description="The images: a CSV per split, the size they are decoded to, batching.")
    model: ModelConfig = Field(description="The trained model to prune.")
    pruning: Schedule = Field(description="When and how far to prune: the pruning schedule.")
    training: TrainingConfig = Field(description="Fine-tuning under the schedule, and its retries.")
    layers: LayerSelection = Field(
        default_factory=LayerSelection,
        description="Which layers are pruned (default: every layer TFMOT can prune), per-layer sparsity, structure.",
    )
    channel_pruning: ChannelPruningConfig | None = Field(
        None, description="Remove whole output channels first (the model rebuilt narrower, then fine-tuned under the "
        "pruning schedule): a model that runs faster, not only one that zips smaller. Unset: no channel is removed.",
    )
    sanity_tolerance: float = Field(
        0.01, ge=0.0, lt=1.0,
        description="Largest gap allowed between a prunable tensor's fraction of zeros and the target sparsity.",
    )
    output_root: ConfigPath = Field(
        description="Folder under which runs store their artifacts and summaries, and sweeps the promoted model "
        "and the history."
    )
    seed: int = Field(42, description="Seed of fine-tuning: the same seed on the same machine gives the same model.")
    export: ExportConfig = Field(
        default_factory=ExportConfig,
        description="The deployable files, their accuracy in their runtime, and latency measurement.",
    )
    sweep: SweepConfig = Field(
        default_factory=SweepConfig,
        description="Used by `pruneflow sweep` only: the targets, the accuracy gate, parallelism.",
    )
    sensitivity: SensitivityConfig = Field(
        default_factory=SensitivityConfig,
        description="Used by `pruneflow sensitivity` only: the sparsities each layer is pruned to alone.",
    )
    registry: RegistryConfig = Field(
        default_factory=RegistryConfig,
        description="Used by `pruneflow sweep` only: the MLflow server its runs and promotions are recorded in.",
    )

    @model_validator(mode="after")
    def _schedule_fits_structure(self) -> RunConfig:
        structured = self.layers.structured_sparsity
        if structured is not None and not math.isclose(self.pruning.final_sparsity, structured):
            field = "target_sparsity" if isinstance(self.pruning, ConstantSchedule) else "final_sparsity"
            raise ValueError(
                f"pruning.{field} is {self.pruning.final_sparsity}, but layers.m_by_n {list(self.layers.m_by_n)} "
                f"zeroes exactly {structured:g} of the weights: set pruning.{field} to {structured:g}"
            )
        return self

    @model_validator(mode="after")
    def _search_fits_training(self) -> RunConfig:
        search = self.sweep.search
        if search is None:
            return self
        if search.stop_after_epochs is not None and search.stop_after_epochs >= self.training.epochs:
            raise ValueError(
                f"sweep.search.stop_after_epochs is {search.stop_after_epochs}, but training.epochs is "
                f"{self.training.epochs}: check before the last epoch, or unset it"
            )
        return self

    @property
    def training_spec(self) -> TrainingSpec:
        """TrainingSpec's fields, each read from the section that holds it."""
        sections = {**self.training.model_dump(), **self.dataset.model_dump(), "seed": self.seed, "layers": self.layers}
        return TrainingSpec(**{name: sections[name] for name in TrainingSpec.model_fields})

    def with_channels(self, fraction: float) -> RunConfig:
        """This config removing `fraction` of the channels (none at 0), as a sweep point does."""
        if not fraction:
            return self.model_copy(update={"channel_pruning": None})
        section = self.channel_pruning or ChannelPruningConfig(fraction=fraction)
        return self.model_copy(update={"channel_pruning": section.model_copy(update={"fraction": fraction})})

    @property
    def channel_spec(self) -> ChannelSpec | None:
        """None when no channel is removed."""
        if self.channel_pruning is None:
            return None
        selection = self.layers.model_dump(include={"include", "exclude", "keep_first_conv"})
        multiple = self.layers.m_by_n[1] if self.layers.m_by_n else 1
        return ChannelSpec(**self.channel_pruning.model_dump(), **selection, multiple=multiple)

    @property
    def layer_errors_spec(self) -> ExportSpec:
        """What quantization_error measures (ExportSpec.post_training_int8): nothing with export.layer_errors off."""
        spec = self.export_spec.post_training_int8()
        return spec if self.export.layer_errors else spec.model_copy(update={"formats": ()})

    @property
    def fallback_spec(self) -> FallbackSpec:
        return FallbackSpec(layers=self.export.float_fallback, max_loss=self.export.fallback_max_loss)

    @property
    def export_spec(self) -> ExportSpec:
        return ExportSpec(**{name: getattr(self.export, name) for name in ExportSpec.model_fields})

    @property
    def qat_spec(self) -> QATSpec | None:
        """None when no format asks for quantization-aware training."""
        if not self.export_spec.wants_qat:
            return None
        training = self.training_spec
        return QATSpec(
            epochs=self.export.qat_epochs, learning_rate=self.export.qat_learning_rate, optimizer=training.optimizer,
            batch_size=training.batch_size, shuffle_seed=training.shuffle_seed, augment=training.augment,
            seed=training.seed,
        )

    @property
    def latency_spec(self) -> LatencySpec:
        export = self.export
        return LatencySpec(runs=export.latency_runs, warmup=export.latency_warmup, threads=export.threads,
                           batch=export.latency_batch, batch_runs=export.latency_batch_runs)


def format_validation_error(error: ValidationError, source: str) -> str:
    """One line per problem, each naming the field as its dotted path in the YAML."""
    lines = [f"{source}: invalid configuration:"]
    for item in error.errors():
        # Drop pydantic's internal steps, e.g. the union tag and validator names.
        loc = ".".join(str(part) for part in item["loc"] if part not in ("constant", "polynomial_decay"))
        message = item["msg"].removeprefix("Value error, ")
        shown = "" if item["type"] in ("missing", "extra_forbidden") else f" (got {item['input']!r})"
        lines.append(f"  {loc or '(top level)'}: {message}{shown}")
    return "\n".join(lines)


def parse_config(data: Any, source: str = "config", base_dir: Path | None = None) -> RunConfig:
    """Validate a mapping into a RunConfig, raising PruneflowError that names each bad field."""
    try:
        return RunConfig.model_validate(data, context={"base_dir": base_dir})
    except ValidationError as error:
        raise PruneflowError(format_validation_error(error, source)) from None


def load_config(path: Path) -> RunConfig:
    """Load a YAML config; relative paths in it are taken from the YAML file's folder."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")  # a byte-order mark, as some editors write, is not content
    except FileNotFoundError:
        raise PruneflowError(f"{path}: config file not found") from None
    except UnicodeDecodeError as error:
        raise PruneflowError(
            f"{path}: not UTF-8 text (byte {error.start}: {error.reason}); save the config as UTF-8"
        ) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(error, "problem", None) or str(error)
        raise PruneflowError(f"{path}: not valid YAML{where}: {problem}") from None
    if not isinstance(data, dict):
        raise PruneflowError(f"{path}: expected a mapping of sections (dataset, model, ...), got {type(data).__name__}")
    return parse_config(data, source=str(path), base_dir=path.resolve().parent)
