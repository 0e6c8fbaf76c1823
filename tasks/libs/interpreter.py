"""A TFLite file run in the TFLite interpreter: images quantized to its input type, outputs
dequantized, batches fed at the size the file allows."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np

from pruneflow.tasks.core.errors import PruneflowError
from pruneflow.tasks.libs.artifacts import PreparedDataset
from pruneflow.tasks.libs.dataset import load_split


def open_interpreter(path: Path, threads: int):
    """A tf.lite.Interpreter on the file, with TFLite's default delegate (XNNPACK) on `threads` threads."""
    from pruneflow.tasks.core.runtime import tf

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
