"""The prune_train and strip stages: wrap the baseline, fine-tune under the schedule, remove the wrappers.

Prune-training checkpoints the wrapped model at every epoch end. A retry, or a re-run after a
crash, resumes after the last complete epoch: an epoch-end .h5 loaded under prune_scope keeps
the pruning step, the masks and the optimizer state.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from tasks.config import Schedule, TrainingSpec
from tasks.dataset import PreparedDataset, load_split
from tasks.errors import PruneflowError
from tasks.faults import fault_callbacks
from tasks.files import write_json
from tasks.log import run_logger
from tasks.models import ModelFile, compile_model, load_model, make_optimizer, require_graph_model, save_model
from tasks.progress import epoch_progress
from tasks.schedule import at_target, to_tfmot
from tasks.selection import LayerPlan, plan_layers, plan_table
from tasks.stage import TRAINING_TAG, Stage
from tasks.store import StoredArtifact

if TYPE_CHECKING:
    from tasks.inputs import Preflight

# Stripping only removes wrappers, so outputs should agree to float rounding.
STRIP_ATOL = 1e-5
STRIP_SAMPLE = 32  # test images on which the stripped model must predict what the wrapped one did


class TrainedModel(StoredArtifact):
    """The wrapped model at the end of prune-training, with its training record."""

    epochs: int
    resumed_from_epoch: int
    steps: int
    seconds: float
    final_val_accuracy: float

    @property
    def wrapped_model(self) -> Path:
        return self.folder / "wrapped.h5"

    @property
    def history(self) -> Path:
        return self.folder / "history.json"

    @property
    def tensorboard_logs(self) -> Path:
        return self.folder / "logs"


class StrippedModel(StoredArtifact):
    """The exportable model with the pruning wrappers removed."""

    max_abs_diff: float

    @property
    def model(self) -> Path:
        return self.folder / "pruned.h5"

    @property
    def file(self) -> ModelFile:
        """The stripped model as a later stage's input, known by this artifact's digest."""
        return ModelFile(path=self.model, digest=self.digest, trust_code=True)


def pruning_policy(name: str):
    """TFMOT's PruningPolicy for TrainingConfig.pruning_policy (None: prune every supported layer)."""
    from tasks.runtime import tfmot

    return tfmot.sparsity.keras.PruneForLatencyOnXNNPack() if name == "xnnpack_latency" else None


def require_policy_fits(model, policy: str, model_path: Path) -> None:
    """Refuse, with TFMOT's reason, a model the pruning policy does not apply to."""
    chosen = pruning_policy(policy)
    if chosen is None:
        return
    try:
        chosen.ensure_model_supports_pruning(model)
    except ValueError as reason:
        raise PruneflowError(
            f"{model_path}: training.pruning_policy {policy} does not fit this model: TFMOT says: {reason}. "
            "It needs a MobileNet-like model: a ZeroPadding2D((1, 1)) then a 3x3 stride-2 'valid' Conv2D on 3 "
            "channels first, 1x1 convolutions and 3x3 depthwise convolutions in between, a "
            "GlobalAveragePooling2D(keepdims=True) last. Use pruning_policy all_layers for other models."
        ) from None


def plan_for(model, schedule: Schedule, training: TrainingSpec, model_path: Path) -> LayerPlan:
    """The layer plan of a run: the config's selection, the schedule's target, the pruning policy."""
    require_graph_model(model, model_path)
    require_policy_fits(model, training.pruning_policy, model_path)
    return plan_layers(
        model, training.layers, schedule.final_sparsity, model_path,
        policy=pruning_policy(training.pruning_policy), policy_name=training.pruning_policy,
    )


def wrap_for_pruning(model, plan: LayerPlan, schedule: Schedule, model_path: Path):
    """The model with a pruning wrapper on each planned layer, every other layer as it was.

    clone_model with a clone function, nested models cloned the same way, is how TFMOT's own
    prune_low_magnitude wraps a whole model; doing it here lets layers TFMOT has no rule for
    (Rescaling, Normalization, TF-op layers) stay in the model unwrapped. Every layer of the
    clone, wrapped or not, is the baseline's own layer object, so training the clone changes
    `model`'s weights: load the baseline afresh for anything else. A layer used in several
    places is cloned once and shared again, as `walk` plans it once.
    """
    from tasks.runtime import keras, tfmot

    made: dict[int, object] = {}

    def clone_with(prefix: str):
        def clone(layer):
            if id(layer) not in made:
                made[id(layer)] = clone_once(prefix, layer)
            return made[id(layer)]
        return clone

    def clone_once(prefix: str, layer):
        if isinstance(layer, keras.Model):
            return keras.models.clone_model(layer, clone_function=clone_with(f"{prefix}{layer.name}/"))
        planned = plan.pruned.get(prefix + layer.name)
        if planned is None:
            return layer
        return tfmot.sparsity.keras.prune_low_magnitude(layer, **pruning_params(plan, at_target(schedule, planned.target)))

    try:
        return keras.models.clone_model(model, clone_function=clone_with(""))
    except (ValueError, NotImplementedError) as error:
        raise PruneflowError(f"{model_path}: TFMOT cannot prune this model: {error}") from None


def pruning_params(plan: LayerPlan, schedule: Schedule) -> dict:
    """prune_low_magnitude's arguments for one layer."""
    params = {"pruning_schedule": to_tfmot(schedule)}
    if plan.m_by_n is not None:
        params["sparsity_m_by_n"] = plan.m_by_n
    if plan.block_size is not None:
        params["block_size"] = plan.block_size
    return params


def restore_structure(wrapped, m_by_n: tuple[int, int] | None) -> None:
    """Give the wrappers of a model loaded from .h5 their m_by_n structure back.

    TFMOT's PruneLowMagnitude.get_config leaves sparsity_m_by_n out, so a checkpoint reloads as
    unstructured pruning (shared/STACK.md); a resumed run would then prune the rest of its steps
    without the structure. Setting it before fit traces the structured mask update.
    """
    from tasks.runtime import PruneLowMagnitude

    if m_by_n is None:
        return
    for wrapper in wrapped.submodules:
        if isinstance(wrapper, PruneLowMagnitude):
            wrapper.sparsity_m_by_n = m_by_n
            wrapper.pruning_obj._sparsity_m_by_n = m_by_n


def pruning_step(wrapped) -> int:
    """Training steps the wrapped model has taken (TFMOT's counter; -1 before the first)."""
    from tasks.runtime import PruneLowMagnitude

    wrapper = next(layer for layer in wrapped.submodules if isinstance(layer, PruneLowMagnitude))
    return int(wrapper.pruning_step.numpy())


def epoch_checkpoint(work_dir: Path, history: dict[str, list[float]]):
    """A callback that saves the wrapped model and the history so far at each epoch end.

    It must come after UpdatePruningStep, which re-applies the masks at epoch end, so that
    each checkpoint is exactly sparse.
    """
    from tasks.runtime import keras

    class EpochCheckpoint(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if not math.isfinite((logs or {}).get("loss", 0.0)):
                return  # diverged: keep the last good checkpoint, never a NaN model
            save_model(self.model, work_dir / "checkpoint.h5", include_optimizer=True)
            for name, value in (logs or {}).items():
                history.setdefault(name, []).append(float(value))
            write_json(work_dir / "history.json", history)

    return EpochCheckpoint()


def start_or_resume(
    baseline: ModelFile, schedule: Schedule, training: TrainingSpec, steps_per_epoch: int, work: Path
):
    """The compiled wrapped model and the number of epochs it has done: from the last epoch-end
    checkpoint in `work` when there is one, else freshly wrapped from the baseline."""
    checkpoint = work / "checkpoint.h5"
    if checkpoint.is_file():
        wrapped = load_model(checkpoint, pruning_wrappers=True, compile=True)
        restore_structure(wrapped, training.layers.m_by_n)
        return wrapped, pruning_step(wrapped) // steps_per_epoch
    model = baseline.load()
    plan = plan_for(model, schedule, training, baseline.path)
    run_logger().info("Layer plan:\n%s", plan_table(plan))
    wrapped = wrap_for_pruning(model, plan, schedule, baseline.path)
    compile_model(wrapped, make_optimizer(training))
    return wrapped, 0


def train_pruned(
    out: Path, work: Path, dataset: PreparedDataset, baseline: ModelFile, schedule: Schedule, training: TrainingSpec
) -> TrainedModel:
    """Fine-tune the baseline under the pruning schedule; write the wrapped model to `out`.

    Callbacks: UpdatePruningStep (required: it advances the pruning step and re-applies the
    masks at each epoch end), PruningSummaries (per-layer sparsity in TensorBoard logs), an
    epoch-end checkpoint into `work`, from which a later attempt resumes, and, in a Prefect run,
    a progress artifact updated at each epoch end.
    """
    from tasks.runtime import configure_devices, keras, tfmot

    logger = run_logger()
    logger.info("Training on %s", configure_devices())
    logger.info("Prune-training for %d epochs under %s", training.epochs, schedule.model_dump())
    keras.backend.clear_session()
    keras.utils.set_random_seed(training.seed)
    work.mkdir(parents=True, exist_ok=True)
    steps_per_epoch = training.steps_per_epoch(dataset.counts["train"])
    wrapped, done = start_or_resume(baseline, schedule, training, steps_per_epoch, work)
    history_path = work / "history.json"
    history = json.loads(history_path.read_text()) if done and history_path.is_file() else {}
    history = {name: values[:done] for name, values in history.items()}
    if done:
        print(f"Resuming prune-training after epoch {done} of {training.epochs}", flush=True)

    callbacks = [
        tfmot.sparsity.keras.UpdatePruningStep(),
        tfmot.sparsity.keras.PruningSummaries(log_dir=str(work / "logs")),
        keras.callbacks.TerminateOnNaN(),
        epoch_checkpoint(work, history),
        epoch_progress("Prune-training", training.epochs, done),
        *fault_callbacks(schedule.final_sparsity),
    ]
    started = time.perf_counter()
    if done < training.epochs:
        fitted = wrapped.fit(
            load_split(dataset, "train", training.batch_size, shuffle_seed=training.shuffle_seed, augment=training.augment),
            validation_data=load_split(dataset, "val", training.batch_size),
            initial_epoch=done,
            epochs=training.epochs,
            callbacks=callbacks,
            # A progress bar per batch in a terminal; one line per epoch in a log file.
            verbose=1 if sys.stdout.isatty() else 2,
        )
        losses = fitted.history.get("loss", [])
        if losses and not math.isfinite(losses[-1]):
            raise PruneflowError(
                f"prune-training diverged: the loss became {losses[-1]} in epoch {done + len(losses)} of "
                f"{training.epochs}, so no model was saved. Lower training.learning_rate "
                f"(now {training.learning_rate}) or check the data."
            )
    seconds = time.perf_counter() - started

    # With its optimizer state: the pruning step and masks live in the wrapped model's weights.
    save_model(wrapped, out / "wrapped.h5", include_optimizer=True)
    write_json(out / "history.json", history)
    shutil.copytree(work / "logs", out / "logs")
    return TrainedModel(
        folder=out,
        epochs=training.epochs,
        resumed_from_epoch=done,
        steps=steps_per_epoch * training.epochs,
        seconds=seconds,
        final_val_accuracy=history["val_accuracy"][-1],
    )


def strip_wrappers(wrapped_path: Path, sample, out_path: Path) -> float:
    """Remove the pruning wrappers, check the outputs did not change, save without optimizer.

    Returns:
        The largest change in the model's outputs on `sample`.

    Raises:
        RuntimeError: the stripped model's predictions differ from the wrapped model's.
    """
    from tasks.runtime import keras, tfmot

    keras.backend.clear_session()
    wrapped = load_model(wrapped_path, pruning_wrappers=True)
    stripped = tfmot.sparsity.keras.strip_pruning(wrapped)
    before = wrapped(sample, training=False).numpy()
    after = stripped(sample, training=False).numpy()
    diff = float(np.max(np.abs(before - after)))
    if diff > STRIP_ATOL:
        raise RuntimeError(f"stripping changed the model's outputs by up to {diff:g} (> {STRIP_ATOL:g})")
    save_model(stripped, out_path)
    return diff


def is_transient(exc: BaseException) -> bool:
    """Failures worth a retry: out of memory, I/O, a lost device. Never a user error."""
    from tasks.runtime import tf

    if isinstance(exc, PruneflowError):
        return False
    transient = (
        tf.errors.ResourceExhaustedError, tf.errors.UnavailableError, tf.errors.AbortedError,
        MemoryError, OSError,
    )
    return isinstance(exc, transient)


def check_prunable(preflight: Preflight) -> None:
    """The schedule prunes inside the run, and the layer selection fits the baseline (patterns that
    match, layers that can take the structure, something left to prune)."""
    preflight.plan  # noqa: B018 (planning is the check)


def strip_model(out: Path, trained: TrainedModel, dataset: PreparedDataset) -> StrippedModel:
    """Remove the pruning wrappers; the stripped model must predict what the wrapped one did."""
    sample, _ = next(iter(load_split(dataset, "test", STRIP_SAMPLE)))
    return StrippedModel(folder=out, max_abs_diff=strip_wrappers(trained.wrapped_model, sample, out / "pruned.h5"))


def describe_training(trained: TrainedModel) -> str:
    resumed = f", resumed after epoch {trained.resumed_from_epoch}" if trained.resumed_from_epoch else ""
    return (
        f"{trained.seconds:.1f} s of training ({trained.steps} steps{resumed}); "
        f"final val accuracy {trained.final_val_accuracy:.4f}"
    )


prune_train = Stage(
    "prune_train", train_pruned, check=check_prunable, describe=describe_training, resumable=True,
    retry_if=is_transient, tags=(TRAINING_TAG,),
)
strip = Stage(
    "strip", strip_model,
    describe=lambda stripped: f"saved to {stripped.model} (max output change {stripped.max_abs_diff:.2g})",
)
