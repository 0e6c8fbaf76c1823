"""ONNX files: a Keras model converted with tf2onnx, int8 through onnxruntime's static quantization
(calibrated on the same training images as TFLite's int8), and its weights read back with their
zeros. Needs the `onnx` extra (pip install 'pruneflow[onnx]')."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from pruneflow.tasks.core.errors import PruneflowError
from pruneflow.tasks.libs.artifacts import WeightTensor
from pruneflow.tasks.libs.timing import Invocation
from pruneflow.tasks.specs.config import ExportSpec
from pruneflow.tasks.specs.formats import Format

INPUT_NAME = "images"
OPSET = 17
EXTRA = "the onnx formats need the `onnx` extra: pip install 'pruneflow[onnx]' (tf2onnx, onnx, onnxruntime)"


def require_installed() -> None:
    """Refuse the ONNX formats, saying what to install, where tf2onnx or onnxruntime is missing."""
    import importlib.util

    missing = [name for name in ("tf2onnx", "onnx", "onnxruntime") if importlib.util.find_spec(name) is None]
    if missing:
        raise PruneflowError(f"export.formats: {EXTRA}; {', '.join(missing)} missing.")


def convert(model, fmt: Format, spec: ExportSpec, calibration: np.ndarray | None) -> bytes:
    """The model as an ONNX file in format `fmt`: float32, or int8 weights and activations (QDQ,
    per-channel weights) with its ranges measured on `calibration`."""
    import tf2onnx

    from pruneflow.tasks.core.runtime import tf

    signature = (tf.TensorSpec((None, *model.input_shape[1:]), tf.float32, name=INPUT_NAME),)
    proto, _ = tf2onnx.convert.from_keras(model, input_signature=signature, opset=OPSET)
    if not fmt.int8:
        return proto.SerializeToString()
    return quantized(proto.SerializeToString(), calibration)


def quantized(float_model: bytes, calibration: np.ndarray) -> bytes:
    """onnxruntime's static int8 quantization of an ONNX model, calibrated on `calibration`."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Images(CalibrationDataReader):
        def __init__(self):
            self.images = iter(calibration)

        def get_next(self):
            image = next(self.images, None)
            return None if image is None else {INPUT_NAME: image[None].astype(np.float32)}

    with tempfile.TemporaryDirectory(prefix="pruneflow-onnx-") as scratch:
        source, target = Path(scratch) / "float.onnx", Path(scratch) / "int8.onnx"
        source.write_bytes(float_model)
        quantize_static(
            source, target, Images(), quant_format=QuantFormat.QDQ, activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8, per_channel=True,
        )
        return target.read_bytes()


def weight_tensors(path: Path) -> list[WeightTensor]:
    """Every initializer of two or more dimensions in an ONNX file (the kernels), with its zeros:
    for a quantized one, the values equal to its zero point."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    values = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    zero_points = {}
    for node in model.graph.node:
        if node.op_type == "DequantizeLinear" and len(node.input) > 2 and node.input[0] in values:
            axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
            zero_points[node.input[0]] = (values.get(node.input[2]), axis)
    found = []
    for name, array in values.items():
        if array.ndim < 2:
            continue
        zero, axis = zero_points.get(name, (None, 1))
        if zero is None or zero.size == 1:
            stored_zero = 0 if zero is None else zero.reshape(-1)[0]
        else:
            shape = [1] * array.ndim
            shape[axis] = zero.size
            stored_zero = zero.reshape(shape)
        found.append(WeightTensor(
            name=name, shape=list(array.shape), size=int(array.size), zeros=int(np.sum(array == stored_zero)),
            stored_sparse=False,
        ))
    return found


def predictor(path: Path, threads: int, batch: int):
    """Runs the file in onnxruntime on batches of `batch` images (its batch dimension is open)."""
    session = _session(path, threads)

    def predict(images: np.ndarray) -> np.ndarray:
        rows = [
            session.run(None, {INPUT_NAME: images[first : first + batch].astype(np.float32)})[0]
            for first in range(0, len(images), batch)
        ]
        return np.concatenate(rows).reshape(len(images), -1)

    return predict


def timed_call(path: Path, images: np.ndarray, threads: int):
    """One onnxruntime invocation of the file on `images`: what latency times."""
    session = _session(path, threads)
    feed = {INPUT_NAME: images.astype(np.float32)}
    return Invocation(lambda: session.run(None, feed))


def _session(path: Path, threads: int):
    try:
        import onnxruntime
    except ImportError:
        raise PruneflowError(f"{path}: {EXTRA}") from None
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    try:
        return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime raises its own Fail and InvalidGraph errors
        raise PruneflowError(f"{path}: onnxruntime cannot load it: {str(error).strip()[:300]}") from None
