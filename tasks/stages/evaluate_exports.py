"""The evaluate_*_exports stages: each TFLite file run in tf.lite.Interpreter on the test split.

A file is judged by what it does, not by the Keras model it came from: its accuracy on the
test split (in CSV order, never shuffled or augmented), and its agreement with the Keras model
it was converted from (the share of test images on which both give the same top-1 class; for
an int8_qat file, the quantization-aware model). An integer input is
quantized with the scale and zero point the file itself declares; an integer output is
dequantized the same way.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pruneflow.tasks.core.files import write_json
from pruneflow.tasks.core.stage import Stage
from pruneflow.tasks.libs.artifacts import (
    ExportedModels,
    ExportEvaluation,
    FileEvaluation,
    PreparedDataset,
    QuantizedModel,
)
from pruneflow.tasks.libs.dataset import load_split
from pruneflow.tasks.libs.interpreter import Predictor, available_cpus, top1
from pruneflow.tasks.libs.models import ModelFile
from pruneflow.tasks.specs.config import from_qat


def evaluate_exports(
    out: Path, exported: ExportedModels, reference: ModelFile, quantized: QuantizedModel | None,
    dataset: PreparedDataset, batch_size: int,
) -> ExportEvaluation:
    """Accuracy of each exported file in the interpreter, and its agreement with the Keras model
    it was converted from: `reference`, or `quantized` (the quantization-aware model) for the
    int8_qat formats. One file at a time, one batch of images at a time, in memory."""
    from pruneflow.tasks.core.runtime import keras

    keras.backend.clear_session()
    expected = {}
    if not all(from_qat(f.format) for f in exported.files):
        expected["plain"] = top1(reference.load(), dataset, batch_size)
    if any(from_qat(f.format) for f in exported.files):
        expected["qat"] = top1(quantized.load(), dataset, batch_size)
    evaluations = []
    for exported_file in exported.files:
        predictor = Predictor(exported.path(exported_file), available_cpus(), batch_size)
        predicted, labels = [], []
        for images, batch_labels in load_split(dataset, "test", batch_size).as_numpy_iterator():
            predicted.append(predictor(images).argmax(axis=-1))
            labels.append(batch_labels)
        predicted, labels = np.concatenate(predicted), np.concatenate(labels)
        agreed = predicted == expected["qat" if from_qat(exported_file.format) else "plain"]
        evaluations.append(FileEvaluation(
            format=exported_file.format, accuracy=float(np.mean(predicted == labels)), agreement=float(np.mean(agreed)),
            examples=len(labels),
        ))
    result = ExportEvaluation(folder=out, files=evaluations)
    write_json(out / "evaluation.json", [evaluation.model_dump(mode="json") for evaluation in evaluations])
    return result


def describe(result: ExportEvaluation) -> str:
    if not result.files:
        return "no exported file"
    return ", ".join(f"{e.format} accuracy {e.accuracy:.4f} (agrees {e.agreement:.1%})" for e in result.files)


evaluate_baseline_exports = Stage("evaluate_baseline_exports", evaluate_exports, describe=describe)
evaluate_pruned_exports = Stage("evaluate_pruned_exports", evaluate_exports, describe=describe)
