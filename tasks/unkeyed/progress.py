"""Progress of long work: in the Prefect UI, a progress artifact that training updates each epoch;
on a command's console, the events it reports (report()), to whoever listens.

Outside a Prefect run (a plain function call in a test, a script) there is no artifact to show,
and nothing listens: the build functions stay plain Python.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from contextvars import ContextVar

PROGRESS_KEY = "pruneflow-training-progress"


def in_prefect_run() -> bool:
    from prefect.context import TaskRunContext

    return TaskRunContext.get() is not None


def epoch_progress(title: str, epochs: int, done: int = 0):
    """A Keras callback that shows `done`..`epochs` epochs as a Prefect progress artifact, from the
    start of training (at `done` of `epochs`, for a resumed run) to its end (100%)."""
    from pruneflow.tasks.core.runtime import keras

    class EpochProgress(keras.callbacks.Callback):
        artifact_id = None
        started, current = 0.0, 0

        def on_train_begin(self, logs=None):
            if not in_prefect_run():
                return
            from prefect.artifacts import create_progress_artifact

            self.artifact_id = create_progress_artifact(
                100.0 * done / epochs, key=PROGRESS_KEY, description=f"{title}: epoch {done} of {epochs}"
            )

        def on_epoch_begin(self, epoch, logs=None):
            self.started, self.current = time.perf_counter(), epoch + 1

        def on_train_batch_end(self, batch, logs=None):
            if listening():
                report("batch", title=title, epoch=self.current, epochs=epochs, batch=batch + 1,
                       batches=self.params.get("steps"), seconds=time.perf_counter() - self.started)

        def on_epoch_end(self, epoch, logs=None):
            report("epoch", title=title, epoch=epoch + 1, epochs=epochs, seconds=time.perf_counter() - self.started,
                   val_accuracy=(logs or {}).get("val_accuracy"))
            if self.artifact_id is None:
                return
            from prefect.artifacts import update_progress_artifact

            accuracy = (logs or {}).get("val_accuracy")
            shown = f", val accuracy {accuracy:.4f}" if accuracy is not None else ""
            update_progress_artifact(
                self.artifact_id, 100.0 * (epoch + 1) / epochs, description=f"{title}: epoch {epoch + 1} of {epochs}{shown}"
            )

    return EpochProgress()


# Progress on a command's console. A `pruneflow` command listens (pruneflow.flows.console); the
# flows and the training callback report to it. Nothing listens in a worker's flow run, a test or
# a script: reports then cost nothing and show nowhere (the Prefect artifact above still does).
_LISTENER: Callable[[str, dict], None] | None = None
# The sweep point (its label: "0.5", "0.5+c0.25") the work in this context is for.
POINT: ContextVar[str | None] = ContextVar("pruneflow_point", default=None)


def for_point(label: str) -> None:
    """Say that the work in this context (a sweep point's task run) is for the point `label`."""
    POINT.set(label)


def listen(listener: Callable[[str, dict], None] | None) -> None:
    """Send every report of this process to `listener(kind, fields)`; None: to nobody."""
    global _LISTENER
    _LISTENER = listener


def listening() -> bool:
    return _LISTENER is not None


def report(kind: str, **fields) -> None:
    """One event (kind: points, stage, epoch, batch, layer), with the point it is for, if any."""
    if _LISTENER is not None:
        _LISTENER(kind, {"point": POINT.get(), **fields})


def fit_verbosity() -> int:
    """Keras fit's `verbose`: silent when a command shows the progress itself; else a bar per batch
    in a terminal, one line per epoch in a log file (a worker's)."""
    if listening():
        return 0
    return 1 if sys.stdout.isatty() else 2
