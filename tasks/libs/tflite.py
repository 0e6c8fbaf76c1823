"""TFLite files: a Keras model converted to each format, and its kernels read back from the
flatbuffer with their zeros (a sparse tensor stores its non-zeros only), matched to the pruned
model's kernels to prove that each file kept its sparsity."""

from __future__ import annotations

import typing
import warnings
from pathlib import Path

import numpy as np

from pruneflow.tasks.core.errors import PruneflowError
from pruneflow.tasks.libs.artifacts import PreparedDataset, SanityReport, WeightTensor
from pruneflow.tasks.libs.dataset import load_split
from pruneflow.tasks.libs.sparsity import TensorSparsity
from pruneflow.tasks.specs.config import ExportFormat, ExportSpec, IOType, dense_counterpart

REPRESENTATIVE_SEED = 0  # which training images calibrate int8: the same ones in every run
# TFLite's TensorType values for weights, as numpy types (tensorflow/lite/schema/schema.fbs).
WEIGHT_TYPES = {0: np.float32, 1: np.float16, 3: np.uint8, 7: np.int16, 9: np.int8}


def representative_images(dataset: PreparedDataset, count: int) -> np.ndarray:
    """`count` training images (all of them if there are fewer), the same ones in every run;
    only those are kept in memory."""
    total = dataset.counts["train"]
    chosen = set(np.random.default_rng(REPRESENTATIVE_SEED).permutation(total)[:count].tolist())
    kept, seen = [], 0
    for batch, _ in load_split(dataset, "train", 256).as_numpy_iterator():
        kept += [image for offset, image in enumerate(batch) if seen + offset in chosen]
        seen += len(batch)
        if len(kept) == len(chosen):
            break
    return np.stack(kept)


def convert(model, fmt: ExportFormat, spec: ExportSpec, calibration: np.ndarray) -> bytes:
    """The model as a TFLite flatbuffer in format `fmt`."""
    from pruneflow.tasks.core.runtime import tf

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    optimizations = [tf.lite.Optimize.EXPERIMENTAL_SPARSITY] if fmt.endswith("_sparse") else []
    if fmt.startswith("int8"):
        optimizations.append(tf.lite.Optimize.DEFAULT)
        converter.representative_dataset = lambda: ([image[None]] for image in calibration)
        # Full-integer: every op in int8, or the conversion fails instead of keeping float ops.
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = io_dtype(spec.int8_input_type)
        converter.inference_output_type = io_dtype(spec.int8_output_type)
    converter.optimizations = optimizations
    with warnings.catch_warnings():
        # Raised for every int8 input although the representative dataset gives the statistics.
        warnings.filterwarnings("ignore", message="Statistics for quantized inputs were expected", category=UserWarning)
        return converter.convert()


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


def _names_layer(tensor_name: str, layer_path: str) -> bool:
    """Whether a TFLite tensor's name (';'-joined op paths, each starting with the model's name)
    runs through the Keras layer `layer_path` ('dense' or 'backbone/conv2d'): its names as
    consecutive path components after the first (a quantization-aware model's layer is named
    'quant_dense' for 'dense')."""
    wanted = layer_path.split("/")

    def same(parts: list[str]) -> bool:
        return all(part in (name, f"quant_{name}") for part, name in zip(parts, wanted))

    for op_path in tensor_name.split(";"):
        parts = op_path.split("/")
        if any(same(parts[i : i + len(wanted)]) for i in range(1, len(parts) - len(wanted) + 1)):
            return True
    return False


def _dims(shape: list[int]) -> list[int]:
    """A shape's dimensions other than 1, sorted: what TFLite's layouts keep of a Keras kernel's
    (HWIO becomes OHWI, a Dense kernel is transposed, a Conv1D kernel gains a 1)."""
    return sorted(d for d in shape if d != 1)


def match_kernels(sanity: SanityReport, weights: list[WeightTensor]) -> list[TensorSparsity | None]:
    """For each tensor of the sanity report, the file's tensor of the same shape (in TFLite's
    layout) named after its layer, or, failing a name, the one tensor left of that shape; as
    TensorSparsity (passed: see the module docstring), or None if none is found."""
    taken: set[int] = set()
    matched: list[TensorSparsity | None] = []
    for kernel in sanity.tensors:
        alike = [
            i for i, w in enumerate(weights)
            if i not in taken and w.size == kernel.size and (not kernel.shape or _dims(w.shape) == _dims(kernel.shape))
        ]
        named = [i for i in alike if _names_layer(weights[i].name, kernel.layer)]
        pick = named[0] if len(named) == 1 else (alike[0] if len(alike) == 1 else None)
        if pick is None:
            matched.append(None)
            continue
        taken.add(pick)
        zeros = weights[pick].zeros
        sparsity = zeros / kernel.size
        matched.append(TensorSparsity(
            layer=kernel.layer, weight=kernel.weight, size=kernel.size, zeros=zeros, sparsity=sparsity,
            passed=not _lost_zeros(sanity, kernel, sparsity) and not _lost_weights(sanity, kernel, sparsity),
            target=kernel.target,
            shape=weights[pick].shape,
        ))
    return matched


def _lost_zeros(sanity: SanityReport, kernel: TensorSparsity, sparsity: float) -> bool:
    """The file's tensor holds fewer zeros than the Keras kernel (which reached its target), beyond the tolerance."""
    return sparsity < kernel.sparsity - sanity.tolerance


def _lost_weights(sanity: SanityReport, kernel: TensorSparsity, sparsity: float) -> bool:
    """The file's tensor holds more zeros than the Keras kernel, beyond the tolerance."""
    return sparsity > kernel.sparsity + sanity.tolerance


def file_name(fmt: ExportFormat) -> str:
    """The name of a format's file (which its zip-deflated size includes, as an archive member)."""
    return f"model_{fmt}.tflite"


def _variants(fmt: ExportFormat) -> str:
    """The formats built on `fmt`'s dense counterpart: what to leave out when it cannot be made."""
    dense = dense_counterpart(fmt)
    return ", ".join(f for f in typing.get_args(ExportFormat) if dense_counterpart(f) == dense)


def check_kernels(fmt: ExportFormat, sanity: SanityReport, weights: list[WeightTensor], model_path: Path) -> list[TensorSparsity]:
    """The pruned kernels as found in the file; raise unless each is there with its zeros and its weights."""
    matched = match_kernels(sanity, weights)
    missing = [f"{k.layer} {k.weight}" for k, m in zip(sanity.tensors, matched) if m is None]
    if missing:
        raise PruneflowError(
            f"export {fmt} of {model_path}: no single tensor of the TFLite file matches {', '.join(missing)} (by "
            f"layer name and shape), so its sparsity cannot be checked. Leave {fmt} out of export.formats."
        )
    lost_zeros = [m for k, m in zip(sanity.tensors, matched) if _lost_zeros(sanity, k, m.sparsity)]
    lost_weights = [(k, m) for k, m in zip(sanity.tensors, matched) if _lost_weights(sanity, k, m.sparsity)]
    problems = []
    if lost_zeros:
        listed = ", ".join(f"{t.layer} {t.weight} at {t.sparsity:.4f} (target {t.target:g})" for t in lost_zeros)
        problems.append(f"{len(lost_zeros)} pruned tensors lost their sparsity: {listed}")
    if lost_weights:
        listed = ", ".join(f"{t.layer} {t.weight} at {t.sparsity:.4f} against {k.sparsity:.4f}" for k, t in lost_weights)
        problems.append(f"{len(lost_weights)} tensors lost weights (more zeros than in the Keras model): {listed}")
    if problems:
        raise PruneflowError(
            f"export {fmt} of {model_path}, tolerance {sanity.tolerance}: {'; '.join(problems)}. The file does not "
            f"compute what the pruned model does: leave {fmt} out of export.formats."
        )
    return matched
