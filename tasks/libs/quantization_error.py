"""Where int8 loses accuracy, layer by layer: TFLite's QuantizationDebugger runs the int8 model
with each quantized op's output beside the float op's output on the same dequantized inputs, so
one layer's error does not pile onto the next one's. Each layer's error is measured on
validation images as the RMSE of the dequantized output against the float one, over the float
output's standard deviation (0: exact; 1: as large as the signal), and as their cosine
similarity (1: same direction)."""

from __future__ import annotations

import csv
import io
import warnings

import numpy as np

from pruneflow.tasks.libs.artifacts import LayerError
from pruneflow.tasks.libs.selection import walk
from pruneflow.tasks.libs.tflite import converter_for
from pruneflow.tasks.specs.config import ExportSpec
from pruneflow.tasks.specs.formats import FORMATS


def _rmse(float_values: np.ndarray, quantized: np.ndarray, scale: float, zero_point: int) -> float:
    error = float_values - (quantized.astype(np.float32) - zero_point) * scale
    spread = float(np.std(float_values))
    return float(np.sqrt(np.mean(error**2)) / spread) if spread > 0 else float(np.any(error != 0))


def _cosine(float_values: np.ndarray, quantized: np.ndarray, scale: float, zero_point: int) -> float:
    a, b = float_values.ravel(), ((quantized.astype(np.float32) - zero_point) * scale).ravel()
    norms = float(np.linalg.norm(a) * np.linalg.norm(b))
    return float(np.dot(a, b) / norms) if norms > 0 else float(np.array_equal(a, b))


def layer_errors(model, spec: ExportSpec, calibration: np.ndarray, images: np.ndarray) -> list[LayerError]:
    """Each quantized op of the model's int8 file (calibrated as the int8 format is), measured on
    `images`; worst (largest RMSE) first."""
    from pruneflow.tasks.core.runtime import tf

    converter = converter_for(model, FORMATS["int8"], spec, calibration)
    options = tf.lite.experimental.QuantizationDebugOptions(
        layer_direct_compare_metrics={"rmse": _rmse, "cosine": _cosine}, fully_quantize=True,
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Statistics for quantized inputs were expected", category=UserWarning)
        debugger = tf.lite.experimental.QuantizationDebugger(
            converter=converter, debug_dataset=lambda: ([image[None]] for image in images), debug_options=options,
        )
        debugger.run()
    table = io.StringIO()
    debugger.layer_statistics_dump(table)  # one row per op: op_name, tensor_name, num_elements, our metrics
    paths = [path for path, _ in walk(model)]
    errors = [
        LayerError(layer=layer_of(row["tensor_name"], paths), op=row["op_name"], tensor=row["tensor_name"],
                   elements=int(float(row["num_elements"])), rmse=float(row["rmse"]), cosine=float(row["cosine"]))
        for row in csv.DictReader(io.StringIO(table.getvalue()))
    ]
    return sorted(errors, key=lambda e: -e.rmse)


def layer_of(tensor: str, paths: list[str]) -> str:
    """The Keras layer an op's output tensor comes from: the longest layer path that the tensor's
    first name (`model/nested/layer/Op;...`) holds after the model's own name; the tensor's name
    when none does, or, for the model's output tensor (a Dense layer's softmax, which the file runs as
    an op of its own), the last layer's path and "(output)"."""
    first = tensor.split(";")[0]
    parts = first.split("/")[1:]
    for end in range(len(parts), 0, -1):
        if "/".join(parts[:end]) in paths:
            return "/".join(parts[:end])
    return f"{paths[-1]} (output)" if first.startswith("StatefulPartitionedCall") and paths else first
