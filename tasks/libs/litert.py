"""A TFLite file run in LiteRT (ai-edge-litert), the runtime that replaces tf.lite.Interpreter:
images quantized to its input type, outputs dequantized, batches fed at the size the file allows."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pruneflow.tasks.core.errors import PruneflowError
from pruneflow.tasks.core.log import run_logger
from pruneflow.tasks.libs.timing import Invocation


def open_interpreter(path: Path, threads: int, delegate: bool = True):
    """A LiteRT interpreter on the file, on `threads` threads: with LiteRT's default delegate
    (XNNPACK), or, with `delegate` False, on its built-in kernels alone."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    options = {} if delegate else {"experimental_op_resolver_type": OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES}
    try:
        return Interpreter(model_path=str(path), num_threads=threads, **options)
    except (ValueError, RuntimeError) as error:
        raise PruneflowError(f"{path}: LiteRT cannot load it: {error}") from None


def allocated(path: Path, threads: int, shape: list[int] | None = None):
    """An interpreter on the file with its tensors allocated (its input resized to `shape`, if
    given), and whether XNNPACK runs it. A node XNNPACK accepts but then cannot prepare (LiteRT
    2.3's XNNPACK refuses int8 fully-connected weights stored sparse, which tf.lite.Interpreter
    left to its built-in kernels) fails the whole delegate: the file then runs on LiteRT's
    built-in kernels alone."""
    for delegate in (True, False):
        interpreter = open_interpreter(path, threads, delegate)
        if shape is not None:
            interpreter.resize_tensor_input(interpreter.get_input_details()[0]["index"], shape)
        try:
            interpreter.allocate_tensors()
            return interpreter, delegate
        except RuntimeError as error:
            if not delegate or "delegate" not in str(error).lower():
                raise PruneflowError(
                    f"{path}: LiteRT cannot run it: {str(error).strip()}. Leave this format out of export.formats."
                ) from None
            run_logger().info("%s: XNNPACK cannot prepare it (%s): it runs on LiteRT's built-in kernels", path.name, error)
    raise AssertionError("unreachable")


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
        details = open_interpreter(path, threads)  # its tensors' details only: never allocated
        self.input, self.output = details.get_input_details()[0], details.get_output_details()[0]
        self.interpreter, self.batch = None, 1
        if batch > 1:
            try:
                batched, _ = allocated(path, threads, [batch, *self.input["shape"][1:]])
                rows = self._invoke(np.zeros([batch, *self.input["shape"][1:]], np.float32), batched).shape[0]
                if rows != batch:
                    raise ValueError(f"{rows} output rows for {batch} images")
                self.interpreter, self.batch = batched, batch
            except (ValueError, RuntimeError, PruneflowError):  # a reshape inside the file fixes the batch to 1
                pass
        if self.interpreter is None:
            self.interpreter, _ = allocated(path, threads)

    def _invoke(self, images: np.ndarray, interpreter=None) -> np.ndarray:
        interpreter = interpreter or self.interpreter
        interpreter.set_tensor(self.input["index"], to_input(images, self.input))
        try:
            interpreter.invoke()
        except RuntimeError as error:  # an op the file holds but this interpreter cannot run
            raise PruneflowError(
                f"{self.path}: LiteRT cannot run it: {str(error).strip()}. Leave this format out of "
                "export.formats."
            ) from None
        return from_output(interpreter.get_tensor(self.output["index"]), self.output)

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """The file's outputs for `images`, one row per image."""
        rows = []
        for first in range(0, len(images), self.batch):
            chunk = images[first : first + self.batch]
            padded = np.concatenate([chunk, np.repeat(chunk[-1:], self.batch - len(chunk), axis=0)])
            rows.append(self._invoke(padded)[: len(chunk)])
        return np.concatenate(rows).reshape(len(images), -1)


def timed_call(path: Path, images: np.ndarray, threads: int) -> Invocation:
    """One invocation of the file on `images` (its input resized to their batch), the input set once:
    what latency times.

    Raises:
        PruneflowError: the file's batch is fixed (a reshape inside it) and `images` are more than one.
    """
    interpreter, delegated = allocated(path, threads, list(images.shape) if len(images) > 1 else None)
    detail = interpreter.get_input_details()[0]
    interpreter.set_tensor(detail["index"], to_input(images, detail))
    if len(images) > 1:
        interpreter.invoke()
        rows = interpreter.get_tensor(interpreter.get_output_details()[0]["index"]).shape[0]
        if rows != len(images):
            raise PruneflowError(f"{path.name} gives {rows} output rows for a batch of {len(images)}: its batch is fixed")
    note = "" if delegated else f"{path.name} runs on LiteRT's built-in kernels: XNNPACK cannot prepare it"
    return Invocation(interpreter.invoke, note)
