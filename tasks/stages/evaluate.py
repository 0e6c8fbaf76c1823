"""Evaluation stages: the baseline before pruning, the stripped model after, both on the test split."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from pruneflow.tasks.core.files import write_json
from pruneflow.tasks.core.stage import Stage
from pruneflow.tasks.libs.artifacts import PreparedDataset
from pruneflow.tasks.libs.dataset import load_split
from pruneflow.tasks.libs.models import ModelFile, check_compatible, evaluate

if TYPE_CHECKING:
    from pruneflow.tasks.libs.readings import Readings
from pruneflow.tasks.libs.artifacts import Evaluation


def evaluate_on_test(out: Path, model: ModelFile, dataset: PreparedDataset, batch_size: int) -> Evaluation:
    """Test accuracy and loss of the model; the test split is never shuffled or augmented."""
    from pruneflow.tasks.core.runtime import keras

    keras.backend.clear_session()
    accuracy, loss = evaluate(model.load(), load_split(dataset, "test", batch_size))
    result = Evaluation(folder=out, accuracy=accuracy, loss=loss, examples=dataset.counts["test"])
    write_json(out / "evaluation.json", result.model_dump(mode="json", include={"accuracy", "loss", "examples"}))
    return result


def check_baseline_fits(readings: Readings) -> None:
    """The baseline's input takes the configured images and its output has one unit per class."""
    config = readings.config
    check_compatible(readings.baseline_model, config.model.baseline, config.dataset.shape, len(readings.classes))


def describe(result: Evaluation) -> str:
    return f"test accuracy {result.accuracy:.4f}, loss {result.loss:.4f} ({result.examples} images)"


evaluate_baseline = Stage("evaluate_baseline", evaluate_on_test, check=check_baseline_fits, describe=describe)
evaluate_pruned = Stage("evaluate_pruned", evaluate_on_test, describe=describe)
