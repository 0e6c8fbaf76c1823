"""Prune-training and stripping: wrap the baseline, fine-tune under the schedule, remove the wrappers.

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

import numpy as np
from prefect import get_run_logger, task
from pydantic import BaseModel

from tasks.config import RunConfig, Schedule
from tasks.dataset import PreparedDataset, load_split
from tasks.errors import PruneflowError
from tasks.faults import fault_callbacks
from tasks.files import file_digest, write_json
from tasks.models import check_compatible, compile_model, load_model, save_model
from tasks.schedule import to_tfmot
from tasks.store import ARTIFACT_CACHE, ArtifactStore, StoredArtifact, code_version, stage_key

TRAIN = "prune_train"
STRIP = "strip"
# Stripping only removes wrappers, so outputs should agree to float rounding.
STRIP_ATOL = 1e-5


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


def make_optimizer(config: RunConfig):
    from tasks.runtime import keras

    optimizers = {"adam": keras.optimizers.Adam, "sgd": keras.optimizers.SGD, "rmsprop": keras.optimizers.RMSprop}
    return optimizers[config.training.optimizer](learning_rate=config.training.learning_rate)


def unprunable_layers(model) -> list[str]:
    """'name (Class)' of every layer, nested ones included, that TFMOT has no pruning rule for."""
    from tensorflow_model_optimization.python.core.sparsity.keras.prune_registry import PruneRegistry

    from tasks.runtime import keras, tfmot

    found = []
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            found += unprunable_layers(layer)
        elif isinstance(layer, keras.layers.InputLayer):
            continue  # never wrapped: clone_model recreates inputs
        elif not (isinstance(layer, tfmot.sparsity.keras.PrunableLayer) or PruneRegistry.supports(layer)):
            found.append(f"{layer.name} ({type(layer).__name__})")
    return found


def require_prunable(model, model_path: Path) -> None:
    """Refuse, naming the layers, a model that whole-model pruning cannot wrap.

    Raises:
        PruneflowError: a subclassed model, or layers TFMOT has no pruning rule for.
    """
    from tasks.runtime import keras

    if not (isinstance(model, keras.Sequential) or model._is_graph_network):
        raise PruneflowError(
            f"{model_path}: a subclassed model ({type(model).__name__}) cannot be pruned: TFMOT prunes "
            "Sequential and functional models only. Rebuild it with the functional API and load its weights."
        )
    unsupported = unprunable_layers(model)
    if unsupported:
        raise PruneflowError(
            f"{model_path}: TFMOT cannot prune these layers: {', '.join(unsupported)}. Whole-model pruning "
            "needs every layer to be supported; pruning only the supported layers (leaving these unwrapped) "
            "is done by selecting layers with keras.models.clone_model, which pruneflow does not do yet."
        )


def wrap_for_pruning(model, schedule: Schedule, model_path: Path):
    """prune_low_magnitude over the whole model, with TFMOT's refusals explained as user errors."""
    from tasks.runtime import tfmot

    require_prunable(model, model_path)
    try:
        return tfmot.sparsity.keras.prune_low_magnitude(model, pruning_schedule=to_tfmot(schedule))
    except (ValueError, NotImplementedError) as error:
        raise PruneflowError(f"{model_path}: TFMOT cannot prune this model: {error}") from None


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


def start_or_resume(config: RunConfig, dataset: PreparedDataset, schedule: Schedule, work_dir: Path):
    """The compiled wrapped model and the number of epochs it has done: from the last epoch-end
    checkpoint in `work_dir` when there is one, else freshly wrapped from the baseline."""
    checkpoint = work_dir / "checkpoint.h5"
    if checkpoint.is_file():
        wrapped = load_model(checkpoint, pruning_wrappers=True, compile=True)
        return wrapped, pruning_step(wrapped) // config.steps_per_epoch(dataset.counts["train"])
    baseline = load_model(config.model.baseline, trusted=config.model.trust_custom_code)
    check_compatible(baseline, config.model.baseline, config.dataset, len(dataset.classes))
    wrapped = wrap_for_pruning(baseline, schedule, config.model.baseline)
    compile_model(wrapped, make_optimizer(config))
    return wrapped, 0


def train_pruned(
    config: RunConfig, dataset: PreparedDataset, schedule: Schedule, work_dir: Path, out_dir: Path
) -> TrainedModel:
    """Fine-tune the baseline under the pruning schedule; write the wrapped model to `out_dir`.

    Callbacks: UpdatePruningStep (required: it advances the pruning step and re-applies the
    masks at each epoch end), PruningSummaries (per-layer sparsity in TensorBoard logs), and
    an epoch-end checkpoint into `work_dir`, from which a later attempt resumes.
    """
    from tasks.runtime import keras, tfmot

    keras.backend.clear_session()
    keras.utils.set_random_seed(config.seed)
    work_dir.mkdir(parents=True, exist_ok=True)
    wrapped, done = start_or_resume(config, dataset, schedule, work_dir)
    history_path = work_dir / "history.json"
    history = json.loads(history_path.read_text()) if done and history_path.is_file() else {}
    history = {name: values[:done] for name, values in history.items()}
    if done:
        print(f"Resuming prune-training after epoch {done} of {config.training.epochs}", flush=True)

    callbacks = [
        tfmot.sparsity.keras.UpdatePruningStep(),
        tfmot.sparsity.keras.PruningSummaries(log_dir=str(work_dir / "logs")),
        keras.callbacks.TerminateOnNaN(),
        epoch_checkpoint(work_dir, history),
        *fault_callbacks(),
    ]
    started = time.perf_counter()
    if done < config.training.epochs:
        fitted = wrapped.fit(
            load_split(dataset, "train", config.dataset),
            validation_data=load_split(dataset, "val", config.dataset),
            initial_epoch=done,
            epochs=config.training.epochs,
            callbacks=callbacks,
            # A progress bar per batch in a terminal; one line per epoch in a log file.
            verbose=1 if sys.stdout.isatty() else 2,
        )
        losses = fitted.history.get("loss", [])
        if losses and not math.isfinite(losses[-1]):
            raise PruneflowError(
                f"prune-training diverged: the loss became {losses[-1]} in epoch {done + len(losses)} of "
                f"{config.training.epochs}, so no model was saved. Lower training.learning_rate "
                f"(now {config.training.learning_rate}) or check the data."
            )
    seconds = time.perf_counter() - started

    # With its optimizer state: the pruning step and masks live in the wrapped model's weights.
    save_model(wrapped, out_dir / "wrapped.h5", include_optimizer=True)
    write_json(out_dir / "history.json", history)
    shutil.copytree(work_dir / "logs", out_dir / "logs")
    return TrainedModel(
        folder=out_dir,
        epochs=config.training.epochs,
        resumed_from_epoch=done,
        steps=config.steps_per_epoch(dataset.counts["train"]) * config.training.epochs,
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


class _TrainParams(BaseModel):
    schedule: Schedule
    epochs: int
    optimizer: str
    learning_rate: float
    seed: int
    batch_size: int
    shuffle_seed: int
    augment: bool


def train_key(config: RunConfig, dataset: PreparedDataset, schedule: Schedule) -> str:
    """Keyed on the data and baseline contents and every parameter that shapes training."""
    params = _TrainParams(
        schedule=schedule, epochs=config.training.epochs, optimizer=config.training.optimizer,
        learning_rate=config.training.learning_rate, seed=config.seed, batch_size=config.dataset.batch_size,
        shuffle_seed=config.dataset.shuffle_seed, augment=config.dataset.augment,
    )
    inputs = {"dataset": dataset.digest, "baseline": file_digest(config.model.baseline)}
    code = code_version(__name__, "tasks.models", "tasks.dataset", "tasks.schedule")
    return stage_key(TRAIN, code, inputs, params)


def strip_key(trained: TrainedModel) -> str:
    return stage_key(STRIP, code_version(__name__, "tasks.models"), {"wrapped": trained.digest})


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


def retry_if_transient(task, task_run, state) -> bool:
    """Prefect retry_condition_fn: retry prune_train only on transient failures."""
    try:
        state.result()
    except Exception as exc:  # the task's own exception, re-raised by result()
        retry = is_transient(exc)
        get_run_logger().warning(
            "prune_train failed with %s: %s", type(exc).__name__, "retrying" if retry else "not retried"
        )
        return retry
    return False


@task(cache_policy=ARTIFACT_CACHE, persist_result=True, retry_condition_fn=retry_if_transient)
def prune_train(
    store: ArtifactStore, key: str, config: RunConfig, dataset: PreparedDataset, schedule: Schedule
) -> TrainedModel:
    """Fine-tune the baseline with magnitude pruning, resuming from the last epoch checkpoint."""
    from tasks.runtime import configure_devices

    logger = get_run_logger()
    logger.info("Training on %s", configure_devices())
    logger.info("Prune-training for %d epochs under %s", config.training.epochs, schedule.model_dump())
    work_dir = store.work_folder(TRAIN, key)
    trained = store.produce(
        TRAIN, key, TrainedModel, lambda tmp: train_pruned(config, dataset, schedule, work_dir, tmp), scratch=work_dir
    )
    logger.info(
        "Prune-training took %.1f s (%d steps%s); final val accuracy %.4f",
        trained.seconds, trained.steps,
        f", resumed after epoch {trained.resumed_from_epoch}" if trained.resumed_from_epoch else "",
        trained.final_val_accuracy,
    )
    return trained


@task(cache_policy=ARTIFACT_CACHE, persist_result=True)
def strip(
    store: ArtifactStore, key: str, trained: TrainedModel, dataset: PreparedDataset, config: RunConfig
) -> StrippedModel:
    """Remove the pruning wrappers; the stripped model must predict what the wrapped one did."""
    sample, _ = next(iter(load_split(dataset, "test", config.dataset)))
    stripped = store.produce(
        STRIP, key, StrippedModel,
        lambda tmp: StrippedModel(folder=tmp, max_abs_diff=strip_wrappers(trained.wrapped_model, sample, tmp / "pruned.h5")),
    )
    get_run_logger().info("Stripped model saved to %s (max output change %.2g)", stripped.model, stripped.max_abs_diff)
    return stripped
