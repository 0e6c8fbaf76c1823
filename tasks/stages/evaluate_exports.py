"""The evaluate_*_exports stages: every exported file run in its format's runtime on the test split.

A file is judged by what it does, not by the Keras model it came from: its accuracy on the
test split (in CSV order, never shuffled or augmented), and its agreement with the Keras model
it was converted from (the share of test images on which both give the same top-1 class; for
a file converted from the quantization-aware model, that model). Each format names its runtime
(LiteRT for TFLite files, pruneflow.tasks.libs.runtimes); an integer input is quantized with the
scale and zero point the file itself declares, an integer output dequantized the same way.
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
from pruneflow.tasks.libs.models import ModelFile
from pruneflow.tasks.libs.runtimes import RUNTIMES, runtime_packages
from pruneflow.tasks.libs.timing import available_cpus
from pruneflow.tasks.specs.formats import FORMATS


def top1(model, dataset: PreparedDataset, batch_size: int) -> np.ndarray:
    """A Keras model's top-1 class for every test image, in order."""
    return np.concatenate([
        model(images, training=False).numpy().argmax(axis=-1)
        for images, _ in load_split(dataset, "test", batch_size).as_numpy_iterator()
    ])


def evaluate_exports(
    out: Path, exports: list[ExportedModels], reference: ModelFile, quantized: QuantizedModel | None,
    dataset: PreparedDataset, batch_size: int,
) -> ExportEvaluation:
    """Accuracy of each exported file in its runtime, and its agreement with the Keras model it
    was converted from: `reference`, or `quantized` (the quantization-aware model). One file at a
    time, one batch of images at a time, in memory."""
    from pruneflow.tasks.core.runtime import keras

    keras.backend.clear_session()
    files = [(exported.path(file), file.format) for exported in exports for file in exported.files]
    sources = {FORMATS[fmt].source for _, fmt in files}
    expected = {}
    if "stripped" in sources:
        expected["stripped"] = top1(reference.load(), dataset, batch_size)
    if "qat" in sources:
        expected["qat"] = top1(quantized.load(), dataset, batch_size)
    evaluations = []
    for path, fmt in files:
        predictor = RUNTIMES[FORMATS[fmt].runtime].predictor(path, available_cpus(), batch_size)
        predicted, labels = [], []
        for images, batch_labels in load_split(dataset, "test", batch_size).as_numpy_iterator():
            predicted.append(predictor(images).argmax(axis=-1))
            labels.append(batch_labels)
        predicted, labels = np.concatenate(predicted), np.concatenate(labels)
        agreed = predicted == expected[FORMATS[fmt].source]
        evaluations.append(FileEvaluation(
            format=fmt, accuracy=float(np.mean(predicted == labels)), agreement=float(np.mean(agreed)),
            examples=len(labels),
        ))
    result = ExportEvaluation(folder=out, files=evaluations)
    write_json(out / "evaluation.json", [evaluation.model_dump(mode="json") for evaluation in evaluations])
    return result


def describe(result: ExportEvaluation) -> str:
    if not result.files:
        return "no exported file"
    return ", ".join(f"{e.format} accuracy {e.accuracy:.4f} (agrees {e.agreement:.1%})" for e in result.files)


evaluate_baseline_exports = Stage(
    "evaluate_baseline_exports", evaluate_exports, describe=describe, packages=runtime_packages()
)
evaluate_pruned_exports = Stage("evaluate_pruned_exports", evaluate_exports, describe=describe, packages=runtime_packages())
