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

from tasks.errors import PruneflowError


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


class DatasetConfig(_Strict):
    """Where the images are and how they are fed to the model."""

    train_csv: ConfigPath = Field(description="CSV with columns filename,label; paths relative to its folder.")
    val_csv: ConfigPath = Field(description="Validation split, same columns.")
    test_csv: ConfigPath = Field(description="Test split, same columns.")
    image_height: int = Field(gt=0, description="Images are resized to this height.")
    image_width: int = Field(gt=0, description="Images are resized to this width.")
    channels: Literal[1, 3] = Field(3, description="1 for greyscale, 3 for RGB.")
    batch_size: int = Field(32, gt=0, description="Images per training and evaluation step.")
    shuffle_seed: int = Field(42, description="Seed of the training split's shuffle.")
    augment: bool = Field(False, description="Random flips on the training split (never on val/test).")


class ModelConfig(_Strict):
    """The unpruned model to start from."""

    baseline: ConfigPath = Field(description="A Keras model saved as .h5 or .keras.")
    trust_custom_code: bool = Field(
        False, description="Load a baseline with Lambda layers or custom classes, whose loading runs code."
    )

    @model_validator(mode="after")
    def _known_format(self) -> ModelConfig:
        if self.baseline.suffix not in (".h5", ".keras"):
            raise ValueError(f"baseline {self.baseline} must be a .h5 or .keras file")
        return self


class _ScheduleSteps(_Strict):
    begin_step: int = Field(0, ge=0, description="First training step at which pruning may happen.")
    frequency: int = Field(1, ge=1, description="Prune every `frequency` steps.")


class ConstantSchedule(_ScheduleSteps):
    """Prune to one sparsity at every pruning step."""

    model_config = ConfigDict(frozen=True, extra="forbid", title="Constant sparsity")

    kind: Literal["constant"] = Field("constant", description="Schedule type.")
    target_sparsity: Sparsity = Field(description="Fraction of each prunable tensor set to zero, in [0, 1).")
    end_step: int | None = Field(
        None, ge=-1, description="Last pruning step; -1 prunes to the end; omitted: the run's last step."
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
        None, ge=0, description="Step at which final_sparsity is reached; omitted: the run's last step."
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
    learning_rate: float = Field(1e-4, gt=0, description="Fine-tuning learning rate.")
    retries: int = Field(2, ge=0, description="Retries of prune-training after a transient failure (out of memory, I/O).")
    retry_delay_seconds: float = Field(
        10.0, ge=0, description="Delay before the first retry; doubled for each later one."
    )


class SweepConfig(_Strict):
    """A sweep: one baseline pruned to several sparsities, and the gate that picks one to promote."""

    targets: list[Sparsity] = Field(
        [0.5, 0.7, 0.8, 0.9, 0.95], min_length=1, description="Target sparsities, each pruned from the baseline."
    )
    max_accuracy_drop: float = Field(
        1.0, ge=0.0, le=100.0, description="Largest test accuracy drop from the baseline a promoted model may have, in points."
    )
    min_sparsity: Sparsity = Field(0.5, description="Smallest sparsity worth promoting.")
    max_parallel: int = Field(
        1, ge=1, description="Targets trained at once in one process (the thread runner); one is safest for TensorFlow."
    )

    @model_validator(mode="after")
    def _distinct_targets(self) -> SweepConfig:
        if len(set(self.targets)) != len(self.targets):
            raise ValueError(f"targets {self.targets} repeat a sparsity; list each once")
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

    dataset: DatasetConfig = Field(description="The images: CSVs per split, size, batching.")
    model: ModelConfig = Field(description="The model to prune.")
    pruning: Schedule = Field(description="When and how far to prune.")
    training: TrainingConfig = Field(description="Fine-tuning and its retries.")
    sanity_tolerance: float = Field(
        0.01, ge=0.0, lt=1.0, description="Allowed gap between a tensor's fraction of zeros and the target."
    )
    output_root: ConfigPath = Field(description="Folder under which each run writes its outputs.")
    seed: int = Field(42, description="Seed of weight initialisation and training.")
    sweep: SweepConfig = Field(
        default_factory=SweepConfig, description="Used by the sweep flow only: targets, accuracy gate, parallelism."
    )

    def steps_per_epoch(self, n_train: int) -> int:
        return math.ceil(n_train / self.dataset.batch_size)


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
        text = path.read_text()
    except FileNotFoundError:
        raise PruneflowError(f"{path}: config file not found") from None
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
