"""Progress of long work in the Prefect UI: a progress artifact that training updates each epoch.

Outside a Prefect run (a plain function call in a test, a script) there is nowhere to show it,
and the callback does nothing: the build functions stay plain Python.
"""

from __future__ import annotations

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

        def on_train_begin(self, logs=None):
            if not in_prefect_run():
                return
            from prefect.artifacts import create_progress_artifact

            self.artifact_id = create_progress_artifact(
                100.0 * done / epochs, key=PROGRESS_KEY, description=f"{title}: epoch {done} of {epochs}"
            )

        def on_epoch_end(self, epoch, logs=None):
            if self.artifact_id is None:
                return
            from prefect.artifacts import update_progress_artifact

            accuracy = (logs or {}).get("val_accuracy")
            shown = f", val accuracy {accuracy:.4f}" if accuracy is not None else ""
            update_progress_artifact(
                self.artifact_id, 100.0 * (epoch + 1) / epochs, description=f"{title}: epoch {epoch + 1} of {epochs}{shown}"
            )

    return EpochProgress()
