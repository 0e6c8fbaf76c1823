"""The quantization_error stage: where the pruned model's int8 file loses accuracy, layer by
layer (pruneflow.tasks.libs.quantization_error), on validation images drawn evenly across the
classes; the int8 file calibrated as export_pruned calibrates it. The run's report names the
worst layers; layer_errors.csv holds every op."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from pruneflow.tasks.core.files import atomic_path
from pruneflow.tasks.core.stage import Stage
from pruneflow.tasks.libs.artifacts import PreparedDataset, QuantizationErrors
from pruneflow.tasks.libs.dataset import balanced_images, calibration_draw
from pruneflow.tasks.libs.models import ModelFile
from pruneflow.tasks.libs.quantization_error import layer_errors
from pruneflow.tasks.specs.config import ExportSpec


def measure_errors(out: Path, model: ModelFile, dataset: PreparedDataset, export: ExportSpec) -> QuantizationErrors:
    """Each quantized op's error in the model's int8 file, worst first, measured on as many
    validation images as calibrate it; nothing when `export` has no int8 format (see
    ExportSpec.post_training_int8)."""
    if not export.formats:
        return QuantizationErrors(folder=out, layers=[], images=0)
    from pruneflow.tasks.core.runtime import keras

    keras.backend.clear_session()
    calibration, _ = calibration_draw(dataset, export.representative_images)
    images, _ = balanced_images(dataset, "val", export.representative_images)
    errors = layer_errors(model.load(), export, calibration, images)
    with atomic_path(out / "layer_errors.csv") as tmp:
        pd.DataFrame([e.model_dump() for e in errors]).to_csv(tmp, index=False)
    return QuantizationErrors(folder=out, layers=errors, images=len(images))


def describe(errors: QuantizationErrors) -> str:
    if not errors.layers:
        return "no int8 file to measure"
    worst = ", ".join(f"{e.layer} ({e.rmse:.3f})" for e in errors.worst())
    return f"int8 error of {len(errors.layers)} ops on {errors.images} validation images; worst: {worst}"


quantization_error = Stage("quantization_error", measure_errors, describe=describe)
