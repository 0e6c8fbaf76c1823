"""TFLite files: a Keras model converted to each format, and its kernels read back from the
flatbuffer with their zeros (a sparse tensor stores its non-zeros only), matched to the pruned
model's kernels to prove that each file kept its sparsity."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from pruneflow.tasks.libs.artifacts import WeightTensor
from pruneflow.tasks.specs.config import ExportSpec, IOType
from pruneflow.tasks.specs.formats import Format

# TFLite's TensorType values for weights, as numpy types (tensorflow/lite/schema/schema.fbs).
WEIGHT_TYPES = {0: np.float32, 1: np.float16, 3: np.uint8, 7: np.int16, 9: np.int8}


def convert(model, fmt: Format, spec: ExportSpec, calibration: np.ndarray | None) -> bytes:
    """The model as a TFLite flatbuffer in format `fmt`: its kernels stored sparse if the format is,
    full-integer quantized (calibrated on `calibration`) if it is int8."""
    with calibrating():
        return converter_for(model, fmt, spec, calibration).convert()


@contextlib.contextmanager
def calibrating() -> Iterator[None]:
    """Around a conversion that calibrates: the warning TFLite raises for every int8 input,
    although the representative dataset gives the statistics, silenced."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Statistics for quantized inputs were expected", category=UserWarning)
        yield


def converter_for(model, fmt: Format, spec: ExportSpec, calibration: np.ndarray | None):
    """The TFLite converter that `convert` runs, set up for format `fmt`."""
    from pruneflow.tasks.core.runtime import tf

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    optimizations = [tf.lite.Optimize.EXPERIMENTAL_SPARSITY] if fmt.sparse else []
    if fmt.int8:
        optimizations.append(tf.lite.Optimize.DEFAULT)
        converter.representative_dataset = lambda: ([image[None]] for image in calibration)
        if fmt.int16_activations:  # 16x8: int16 activations, int8 weights; float input and output
            converter.target_spec.supported_ops = [tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8]
        else:  # full-integer: every op in int8, or the conversion fails instead of keeping float ops
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            converter.inference_input_type = io_dtype(spec.int8_input_type)
            converter.inference_output_type = io_dtype(spec.int8_output_type)
    converter.optimizations = optimizations
    return converter


def io_dtype(name: IOType):
    from pruneflow.tasks.core.runtime import tf

    return {"float32": tf.float32, "int8": tf.int8, "uint8": tf.uint8}[name]


def _zero_point(tensor, values: np.ndarray, shape: list[int]):
    """What stands for 0 among a tensor's stored values: its zero point (int8 weights are
    symmetric, so 0 in practice), one per channel along the quantized dimension if they differ."""
    quantization = tensor.quantization
    points = None if quantization is None or quantization.zeroPoint is None else np.asarray(quantization.zeroPoint)
    if points is None or len(points) == 0:
        return 0
    if len(set(points.tolist())) == 1 or values.size != int(np.prod(shape)):
        return int(points[0])  # one zero point (or a sparse tensor, whose values have no channel left)
    axis = [1] * len(shape)
    axis[quantization.quantizedDimension] = len(points)
    return np.broadcast_to(points.reshape(axis), shape).reshape(-1)


def weight_tensors(path: Path) -> list[WeightTensor]:
    """Every constant tensor of two or more dimensions in a TFLite file: the kernels."""
    from tensorflow.lite.tools import flatbuffer_utils

    from pruneflow.tasks.core.runtime import tf  # noqa: F401 (tf_keras set up before TensorFlow loads)

    model = flatbuffer_utils.read_model(str(path))
    found = []
    for graph in model.subgraphs:
        for tensor in graph.tensors:
            data = model.buffers[tensor.buffer].data if tensor.buffer < len(model.buffers) else None
            shape = [int(d) for d in (tensor.shape if tensor.shape is not None else [])]
            if data is None or len(shape) < 2 or tensor.type not in WEIGHT_TYPES:
                continue
            values = np.frombuffer(bytes(data), dtype=WEIGHT_TYPES[tensor.type])
            size = int(np.prod(shape))
            stored_nonzero = int(np.count_nonzero(values != _zero_point(tensor, values, shape)))
            name = tensor.name.decode() if isinstance(tensor.name, bytes) else str(tensor.name)
            # A sparse tensor stores its non-zeros only: the rest of its values are zeros.
            found.append(WeightTensor(
                name=name, shape=shape, size=size, zeros=size - stored_nonzero, stored_sparse=tensor.sparsity is not None,
            ))
    return found
