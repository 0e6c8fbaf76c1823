"""The evaluate_*_exports stages: each TFLite file run in tf.lite.Interpreter on the test split.

A file is judged by what it does, not by the Keras model it came from: its accuracy on the
test split (in CSV order, never shuffled or augmented), and its agreement with the Keras model
it was converted from (the share of test images on which both give the same top-1 class; for
an int8_qat file, the quantization-aware model). An integer input is
quantized with the scale and zero point the file itself declares; an integer output is
dequantized the same way.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict

from tasks.config import from_qat
from tasks.dataset import PreparedDataset, load_split
from tasks.errors import PruneflowError
from tasks.export import ExportedModels
from tasks.files import write_json
from tasks.models import ModelFile
from tasks.qat import QuantizedModel
from tasks.stage import Stage
from tasks.store import StoredArtifact


def open_interpreter(path: Path, threads: int):
    """A tf.lite.Interpreter on the file, with TFLite's default delegate (XNNPACK) on `threads` threads."""
    from tasks.runtime import tf

    try:
        with warnings.catch_warnings():
            # "tf.lite.Interpreter is deprecated ... use LiteRT": it is still TF 2.21's interpreter.
            warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated", category=UserWarning)
            return tf.lite.Interpreter(model_path=str(path), num_threads=threads)
    except (ValueError, RuntimeError) as error:
        raise PruneflowError(f"{path}: tf.lite.Interpreter cannot load it: {error}") from None


def to_input(images: np.ndarray, detail: dict) -> np.ndarray:
    """Images (float32 in [0, 1]) as the input tensor takes them: quantized with the tensor's own
    scale and zero point when it is an integer tensor."""
    dtype = np.dtype(detail["dtype"])
    if dtype.kind in "iu":
        scale, zero = detail["quantization"]
        if not scale:
            raise PruneflowError(f"input {detail['name']} is {dtype} without quantization parameters")
        limits = np.iinfo(dtype)
        return np.clip(np.round(images / scale + zero), limits.min, limits.max).astype(dtype)
    return images.astype(dtype)


def from_output(values: np.ndarray, detail: dict) -> np.ndarray:
    """An output tensor's values as floats: dequantized when it is an integer tensor."""
    if np.dtype(detail["dtype"]).kind in "iu":
        scale, zero = detail["quantization"]
        return (values.astype(np.float32) - zero) * scale
    return values.astype(np.float32)


class Predictor:
    """Runs a TFLite file on batches of images, resized to `batch` inputs at a time when the file
    allows it, one at a time otherwise."""

    def __init__(self, path: Path, threads: int, batch: int):
        self.path = path
        self.interpreter = open_interpreter(path, threads)
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]
        self.batch = 1
        if batch > 1:
            try:
                self.interpreter.resize_tensor_input(self.input["index"], [batch, *self.input["shape"][1:]])
                self.interpreter.allocate_tensors()
                self.batch = batch
                rows = self._invoke(np.zeros([batch, *self.input["shape"][1:]], np.float32)).shape[0]
                if rows != batch:
                    raise ValueError(f"{rows} output rows for {batch} images")
            except (ValueError, RuntimeError, PruneflowError):  # a reshape inside the file fixes the batch to 1
                self.interpreter = open_interpreter(path, threads)
                self.batch = 1
        if self.batch == 1:
            self.interpreter.allocate_tensors()

    def _invoke(self, images: np.ndarray) -> np.ndarray:
        self.interpreter.set_tensor(self.input["index"], to_input(images, self.input))
        try:
            self.interpreter.invoke()
        except RuntimeError as error:  # an op the file holds but this interpreter cannot run
            raise PruneflowError(
                f"{self.path}: tf.lite.Interpreter cannot run it: {str(error).strip()}. Leave this format out of "
                "export.formats."
            ) from None
        return from_output(self.interpreter.get_tensor(self.output["index"]), self.output)

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """The file's outputs for `images`, one row per image."""
        rows = []
        for first in range(0, len(images), self.batch):
            chunk = images[first : first + self.batch]
            padded = np.concatenate([chunk, np.repeat(chunk[-1:], self.batch - len(chunk), axis=0)])
            rows.append(self._invoke(padded)[: len(chunk)])
        return np.concatenate(rows).reshape(len(images), -1)


class FileEvaluation(BaseModel):
    """One TFLite file's figures on the test split."""

    model_config = ConfigDict(frozen=True)

    format: str
    accuracy: float
    agreement: float  # share of test images where its top-1 class is the Keras model's
    examples: int


class ExportEvaluation(StoredArtifact):
    """Every exported file of one model, evaluated (also in evaluation.json)."""

    files: list[FileEvaluation]

    def of(self, fmt: str) -> FileEvaluation:
        return next(evaluation for evaluation in self.files if evaluation.format == fmt)


def available_cpus() -> int:
    """CPUs this process may run on (a container's or a worker's share, not the machine's)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def top1(model, dataset: PreparedDataset, batch_size: int) -> np.ndarray:
    """A Keras model's top-1 class for every test image, in order."""
    return np.concatenate([
        model(images, training=False).numpy().argmax(axis=-1)
        for images, _ in load_split(dataset, "test", batch_size).as_numpy_iterator()
    ])


def evaluate_exports(
    out: Path, exported: ExportedModels, reference: ModelFile, quantized: QuantizedModel | None,
    dataset: PreparedDataset, batch_size: int,
) -> ExportEvaluation:
    """Accuracy of each exported file in the interpreter, and its agreement with the Keras model
    it was converted from: `reference`, or `quantized` (the quantization-aware model) for the
    int8_qat formats. One file at a time, one batch of images at a time, in memory."""
    from tasks.runtime import keras

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
