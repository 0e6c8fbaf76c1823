"""The prune_train stage: wrap the baseline, fine-tune it under the schedule.

Prune-training checkpoints the wrapped model at every epoch end. A retry, or a re-run after a
crash, resumes after the last complete epoch: an epoch-end .h5 loaded under prune_scope keeps
the pruning step, the masks and the optimizer state.

In a search, a trial may stop early (StopRule): at the end of its rule's epoch, a validation
accuracy already too far under the unpruned model's ends the training there; the artifact says
so, and the graph makes nothing more of it.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field

from pruneflow.tasks.core.errors import PruneflowError
from pruneflow.tasks.core.files import write_json
from pruneflow.tasks.core.log import run_logger
from pruneflow.tasks.core.stage import TRAINING_TAG, Stage
from pruneflow.tasks.libs.artifacts import PreparedDataset
from pruneflow.tasks.libs.dataset import load_split
from pruneflow.tasks.libs.models import (
    ModelFile,
    compile_model,
    evaluate,
    load_model,
    make_optimizer,
    save_model,
)
from pruneflow.tasks.libs.selection import plan_table
from pruneflow.tasks.specs.config import Schedule, TrainingSpec
from pruneflow.tasks.unkeyed.faults import fault_callbacks, fault_point
from pruneflow.tasks.unkeyed.progress import epoch_progress, fit_verbosity

if TYPE_CHECKING:
    from pruneflow.tasks.libs.readings import Readings
from pruneflow.tasks.libs.artifacts import TrainedModel
from pruneflow.tasks.libs.pruning import pruning_step, restore_structure, wrap_for_pruning
from pruneflow.tasks.libs.selection import plan_for


def epoch_checkpoint(work_dir: Path, history: dict[str, list[float]]):
    """A callback that saves the history so far and the wrapped model at each epoch end.

    It must come after UpdatePruningStep, which re-applies the masks at epoch end, so that
    each checkpoint is exactly sparse. The history is written first: a resume counts its epochs
    from the checkpoint and cuts the history to them, so a kill between the two writes leaves a
    history one epoch ahead, which is cut, never one behind, which would lose an epoch's figures.
    """
    from pruneflow.tasks.core.runtime import keras

    class EpochCheckpoint(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if not math.isfinite((logs or {}).get("loss", 0.0)):
                return  # diverged: keep the last good checkpoint, never a NaN model
            for name, value in (logs or {}).items():
                history.setdefault(name, []).append(float(value))
            write_json(work_dir / "history.json", history)
            fault_point("checkpoint:history")
            save_model(self.model, work_dir / "checkpoint.h5", include_optimizer=True)

    return EpochCheckpoint()


class StopRule(BaseModel):
    """Stop at the end of epoch `after_epochs` if the validation accuracy is more than `max_drop`
    points under `reference`'s (the unpruned baseline: for a narrowed model, the one before narrowing)."""

    model_config = ConfigDict(frozen=True)

    after_epochs: int = Field(gt=0)
    max_drop: float = Field(ge=0.0)
    reference: ModelFile


def stopped_at(rule: StopRule | None, reference: float | None, history: dict[str, list[float]]) -> int | None:
    """The epoch at which `rule` stops a training with this history, or None while it goes on."""
    if rule is None or reference is None or len(history.get("val_accuracy", [])) < rule.after_epochs:
        return None
    reached = history["val_accuracy"][rule.after_epochs - 1]
    return rule.after_epochs if 100.0 * (reference - reached) > rule.max_drop else None


def reference_accuracy(rule: StopRule | None, dataset: PreparedDataset, batch_size: int, work: Path) -> float | None:
    """The reference model's validation accuracy, measured once per training (kept in `work` for a resume)."""
    if rule is None:
        return None
    stored = work / "reference.json"
    if stored.is_file():
        return json.loads(stored.read_text())["val_accuracy"]
    accuracy, _ = evaluate(rule.reference.load(), load_split(dataset, "val", batch_size))
    write_json(stored, {"val_accuracy": accuracy})
    return accuracy


def early_stop(rule: StopRule | None, reference: float | None, history: dict[str, list[float]]):
    """A callback that stops training where `stopped_at` says (after epoch_checkpoint, which fills `history`)."""
    from pruneflow.tasks.core.runtime import keras

    class EarlyStop(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if stopped_at(rule, reference, history) is not None:
                self.model.stop_training = True

    return EarlyStop()


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
    out: Path, work: Path, dataset: PreparedDataset, baseline: ModelFile, schedule: Schedule, training: TrainingSpec,
    stop: StopRule | None = None,
) -> TrainedModel:
    """Fine-tune the baseline under the pruning schedule; write the wrapped model to `out`.

    Callbacks: UpdatePruningStep (required: it advances the pruning step and re-applies the
    masks at each epoch end), PruningSummaries (per-layer sparsity in TensorBoard logs), an
    epoch-end checkpoint into `work`, from which a later attempt resumes, and, in a Prefect run,
    a progress artifact updated at each epoch end; with `stop`, the rule that may end it early.
    """
    from pruneflow.tasks.core.runtime import configure_devices, keras, tfmot

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
    reference = reference_accuracy(stop, dataset, training.batch_size, work)

    callbacks = [
        tfmot.sparsity.keras.UpdatePruningStep(),
        tfmot.sparsity.keras.PruningSummaries(log_dir=str(work / "logs")),
        keras.callbacks.TerminateOnNaN(),
        epoch_checkpoint(work, history),
        early_stop(stop, reference, history),
        epoch_progress("Prune-training", training.epochs, done),
        *fault_callbacks(schedule.final_sparsity),
    ]
    started = time.perf_counter()
    if done < training.epochs and stopped_at(stop, reference, history) is None:
        fitted = wrapped.fit(
            load_split(dataset, "train", training.batch_size, shuffle_seed=training.shuffle_seed, augment=training.augment),
            validation_data=load_split(dataset, "val", training.batch_size),
            initial_epoch=done,
            epochs=training.epochs,
            callbacks=callbacks,
            verbose=fit_verbosity(),
        )
        losses = fitted.history.get("loss", [])
        if losses and not math.isfinite(losses[-1]):
            raise PruneflowError(
                f"prune-training diverged: the loss became {losses[-1]} in epoch {done + len(losses)} of "
                f"{training.epochs}, so no model was saved. Lower training.learning_rate "
                f"(now {training.learning_rate}) or check the data."
            )
    seconds = time.perf_counter() - started
    stopped = stopped_at(stop, reference, history)
    if stopped is not None:
        logger.info(
            "Stopped after epoch %d of %d: val accuracy %.4f, more than %g points under the unpruned model's %.4f",
            stopped, training.epochs, history["val_accuracy"][stopped - 1], stop.max_drop, reference,
        )

    # With its optimizer state: the pruning step and masks live in the wrapped model's weights.
    save_model(wrapped, out / "wrapped.h5", include_optimizer=True)
    write_json(out / "history.json", history)
    shutil.copytree(work / "logs", out / "logs")
    return TrainedModel(
        folder=out,
        epochs=stopped or training.epochs,
        resumed_from_epoch=done,
        steps=steps_per_epoch * (stopped or training.epochs),
        seconds=seconds,
        final_val_accuracy=history["val_accuracy"][-1],
        stopped_after_epoch=stopped,
        reference_val_accuracy=reference,
    )


def is_transient(exc: BaseException) -> bool:
    """Failures worth a retry: out of memory, I/O, a lost device. Never a user error."""
    from pruneflow.tasks.core.runtime import tf

    if isinstance(exc, PruneflowError):
        return False
    transient = (
        tf.errors.ResourceExhaustedError, tf.errors.UnavailableError, tf.errors.AbortedError,
        MemoryError, OSError,
    )
    return isinstance(exc, transient)


def check_prunable(readings: Readings) -> None:
    """The schedule prunes inside the run, and the layer selection fits the baseline (patterns that
    match, layers that can take the structure, something left to prune)."""
    readings.plan  # noqa: B018 (planning is the check)


def describe_training(trained: TrainedModel) -> str:
    resumed = f", resumed after epoch {trained.resumed_from_epoch}" if trained.resumed_from_epoch else ""
    if trained.stopped_after_epoch is not None:
        resumed += f", stopped early after epoch {trained.stopped_after_epoch}"
    return (
        f"{trained.seconds:.1f} s of training ({trained.steps} steps{resumed}); "
        f"final val accuracy {trained.final_val_accuracy:.4f}"
    )


prune_train = Stage(
    "prune_train", train_pruned, check=check_prunable, describe=describe_training, resumable=True,
    retry_if=is_transient, tags=(TRAINING_TAG,),
)
