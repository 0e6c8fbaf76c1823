"""Prune-training and stripping: wrap the baseline, fine-tune under the schedule, remove the wrappers."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
from prefect import get_run_logger, task
from prefect.cache_policies import NONE
from pydantic import BaseModel, ConfigDict

from tasks.config import RunConfig, Schedule
from tasks.dataset import PreparedDataset, load_split
from tasks.errors import PruneflowError
from tasks.files import write_json
from tasks.models import check_compatible, compile_model, load_model, save_model
from tasks.schedule import to_tfmot

# Stripping only removes wrappers, so outputs should agree to float rounding.
STRIP_ATOL = 1e-5


class TrainedModel(BaseModel):
    """The wrapped model at the end of prune-training, with its training record."""

    model_config = ConfigDict(frozen=True)

    wrapped_model: Path
    history: Path
    tensorboard_logs: Path
    epochs: int
    steps: int
    seconds: float
    final_val_accuracy: float


class StrippedModel(BaseModel):
    """The exportable model with the pruning wrappers removed."""

    model_config = ConfigDict(frozen=True)

    model: Path
    max_abs_diff: float


def make_optimizer(config: RunConfig):
    from tasks.runtime import keras

    optimizers = {"adam": keras.optimizers.Adam, "sgd": keras.optimizers.SGD, "rmsprop": keras.optimizers.RMSprop}
    return optimizers[config.training.optimizer](learning_rate=config.training.learning_rate)


def wrap_for_pruning(model, schedule: Schedule, model_path: Path):
    """prune_low_magnitude over the whole model, with TFMOT's refusals turned into user errors."""
    from tasks.runtime import tfmot

    try:
        return tfmot.sparsity.keras.prune_low_magnitude(model, pruning_schedule=to_tfmot(schedule))
    except (ValueError, NotImplementedError) as error:
        raise PruneflowError(f"{model_path}: TFMOT cannot prune this model: {error}") from None


def train_pruned(
    config: RunConfig, dataset: PreparedDataset, schedule: Schedule, out_dir: Path
) -> TrainedModel:
    """Fine-tune the baseline under the pruning schedule and save the wrapped model.

    Callbacks: UpdatePruningStep (required: it advances the pruning step and re-applies the
    masks at each epoch end, so the saved weights are exactly sparse) and PruningSummaries
    (sparsity and threshold per layer, in TensorBoard logs under out_dir/logs).
    """
    from tasks.runtime import keras, tfmot

    keras.backend.clear_session()
    keras.utils.set_random_seed(config.seed)
    baseline = load_model(config.model.baseline)
    check_compatible(baseline, config.model.baseline, config.dataset, len(dataset.classes))
    wrapped = wrap_for_pruning(baseline, schedule, config.model.baseline)
    compile_model(wrapped, make_optimizer(config))

    logs = out_dir / "logs"
    callbacks = [
        tfmot.sparsity.keras.UpdatePruningStep(),
        tfmot.sparsity.keras.PruningSummaries(log_dir=str(logs)),
    ]
    started = time.perf_counter()
    history = wrapped.fit(
        load_split(dataset, "train", config.dataset),
        validation_data=load_split(dataset, "val", config.dataset),
        epochs=config.training.epochs,
        callbacks=callbacks,
        # A progress bar per batch in a terminal; one line per epoch in a log file.
        verbose=1 if sys.stdout.isatty() else 2,
    )
    seconds = time.perf_counter() - started

    # With its optimizer state: the pruning step and masks live in the wrapped model's weights.
    wrapped_path = save_model(wrapped, out_dir / "wrapped.h5", include_optimizer=True)
    history_path = write_json(out_dir / "history.json", {k: [float(v) for v in vs] for k, vs in history.history.items()})
    steps_per_epoch = config.steps_per_epoch(dataset.counts["train"])
    return TrainedModel(
        wrapped_model=wrapped_path,
        history=history_path,
        tensorboard_logs=logs,
        epochs=config.training.epochs,
        steps=steps_per_epoch * config.training.epochs,
        seconds=seconds,
        final_val_accuracy=float(history.history["val_accuracy"][-1]),
    )


def strip_wrappers(wrapped_path: Path, sample, out_path: Path) -> StrippedModel:
    """Remove the pruning wrappers, check the outputs did not change, save without optimizer.

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
    return StrippedModel(model=out_path, max_abs_diff=diff)


@task(cache_policy=NONE)
def prune_train(config: RunConfig, dataset: PreparedDataset, schedule: Schedule, out_dir: Path) -> TrainedModel:
    """Fine-tune the baseline with magnitude pruning."""
    logger = get_run_logger()
    logger.info("Prune-training for %d epochs under %s", config.training.epochs, schedule.model_dump())
    trained = train_pruned(config, dataset, schedule, out_dir)
    logger.info(
        "Prune-training took %.1f s (%d steps); final val accuracy %.4f",
        trained.seconds, trained.steps, trained.final_val_accuracy,
    )
    return trained


@task(cache_policy=NONE)
def strip(trained: TrainedModel, dataset: PreparedDataset, config: RunConfig, out_path: Path) -> StrippedModel:
    """Remove the pruning wrappers; the stripped model must predict what the wrapped one did."""
    sample, _ = next(iter(load_split(dataset, "test", config.dataset)))
    stripped = strip_wrappers(trained.wrapped_model, sample, out_path)
    get_run_logger().info("Stripped model saved to %s (max output change %.2g)", stripped.model, stripped.max_abs_diff)
    return stripped
