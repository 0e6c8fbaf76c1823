"""Where int8 loses accuracy, layer by layer. TFLite's QuantizationDebugger makes a debug model of
the int8 file: beside each quantized op, the float op runs on the same (dequantized) inputs and a
NumericVerify op outputs their difference, so one layer's error does not pile onto the next
one's. We run that model on validation images and read, for each op, the difference and the
quantized output: the RMSE of the difference over the float output's standard deviation (0:
exact; 1: as large as the signal) and the cosine similarity of the two outputs (1: same
direction), each the mean over the images.

(The debugger's own `layer_direct_compare_metrics` hands over a float tensor that the
interpreter has already reused, NaN and infinities among it, so we read the debug model
ourselves, every tensor kept.)"""

from __future__ import annotations

import re

import numpy as np

from pruneflow.tasks.libs.artifacts import LayerError
from pruneflow.tasks.libs.litert import from_output, to_input
from pruneflow.tasks.libs.selection import walk
from pruneflow.tasks.libs.tflite import calibrating, converter_for
from pruneflow.tasks.specs.config import ExportSpec
from pruneflow.tasks.specs.formats import FORMATS

VERIFY = re.compile(r"NumericVerify/(?P<name>.*):(?P<index>\d+)$")  # the debugger's name for an op's check


class Int8Debugger:
    """The model's int8 conversion (calibrated as the int8 format is, once), quantized again as
    often as asked: as a debug model, or with some ops left in float."""

    def __init__(self, model, spec: ExportSpec, calibration: np.ndarray):
        from pruneflow.tasks.core.runtime import tf

        self._tf = tf
        converter = converter_for(model, FORMATS["int8"], spec, calibration)
        # Float ops allowed, for a file with a float fallback (export_pruned's int8 file, converted apart,
        # stays full-integer).
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8, tf.lite.OpsSet.TFLITE_BUILTINS]
        with calibrating():
            self._debugger = tf.lite.experimental.QuantizationDebugger(
                converter=converter, debug_dataset=lambda: iter(()),
                debug_options=tf.lite.experimental.QuantizationDebugOptions(fully_quantize=True),
            )

    def debug_model(self) -> bytes:
        """The int8 model with a NumericVerify op beside each quantized op (see the module's docstring)."""
        return self._debugger.get_debug_quantized_model()

    def tensor_names(self) -> set[str]:
        """The names of the int8 file's tensors (call it before with_float, which changes the file)."""
        interpreter = self._tf.lite.Interpreter(model_content=self._debugger.get_nondebug_quantized_model())
        return {detail["name"] for detail in interpreter.get_tensor_details()}

    def with_float(self, tensors: list[str]) -> bytes:
        """The int8 file with the ops that output `tensors` left in float, and float input and output
        (an int8 input or output alone can cost a model a point: see float_fallback)."""
        options = self._tf.lite.experimental.QuantizationDebugOptions(denylisted_nodes=list(tensors), fully_quantize=False)
        try:
            self._debugger.options = options
        except ValueError:  # every op in float: no op left for its debug model to verify; the options are set
            if self._debugger.options is not options:
                raise
        return self._debugger.get_nondebug_quantized_model()


def layer_errors(model, spec: ExportSpec, calibration: np.ndarray, images: np.ndarray) -> list[LayerError]:
    """Each quantized op of the model's int8 file (calibrated as the int8 format is), measured on
    `images`; worst (largest RMSE) first."""
    from pruneflow.tasks.core.runtime import tf

    debugger = Int8Debugger(model, spec, calibration)
    names = debugger.tensor_names()
    interpreter = tf.lite.Interpreter(  # TFLite's own kernels, op by op: XNNPACK would fuse them into one
        model_content=debugger.debug_model(), experimental_preserve_all_tensors=True,
        experimental_op_resolver_type=tf.lite.experimental.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
    )
    interpreter.allocate_tensors()
    tensors = {detail["index"]: detail for detail in interpreter.get_tensor_details()}
    checks = {detail["index"]: VERIFY.match(detail["name"]) for detail in tensors.values()}
    checks = {index: (_tensor_name(match["name"], names), int(match["index"])) for index, match in checks.items() if match}
    ops = _ops_by_output(interpreter)
    source = interpreter.get_input_details()[0]
    rmse, cosine = ({index: [] for index in checks} for _ in range(2))
    for image in images:
        interpreter.set_tensor(source["index"], to_input(image[None], source))
        interpreter.invoke()
        for index, (_, quantized) in checks.items():
            output = from_output(interpreter.get_tensor(quantized), tensors[quantized])
            difference = interpreter.get_tensor(index).astype(np.float32)  # dequantized minus float
            rmse[index].append(_rmse(output - difference, difference))
            cosine[index].append(_cosine(output - difference, output))
    paths = [path for path, _ in walk(model)]
    errors = [
        LayerError(layer=layer_of(name, paths), op=ops.get(quantized, "?"), tensor=name,
                   elements=int(np.prod(tensors[quantized]["shape"][1:])), rmse=float(np.nanmean(rmse[index])),
                   cosine=float(np.nanmean(cosine[index])))
        for index, (name, quantized) in checks.items()
    ]
    return sorted(errors, key=lambda e: -e.rmse)


def _tensor_name(name: str, names: set[str]) -> str:
    """The op's output tensor as the int8 file names it (what a float fallback denylists): the
    debug model appends a digit to most (`.../BiasAdd1`), not to all (the model's output)."""
    return next((candidate for candidate in (name, name[:-1]) if candidate in names), name)


def _ops_by_output(interpreter) -> dict[int, str]:
    """Each tensor's producing op, by name (CONV_2D); TFLite's Python interpreter lists ops only
    through a private call, so nothing (an op shown as "?") if it stops doing so."""
    try:
        return {output: op["op_name"] for op in interpreter._get_ops_details() for output in op["outputs"]}  # noqa: SLF001
    except AttributeError:
        return {}


def _rmse(reference: np.ndarray, difference: np.ndarray) -> float:
    spread = float(np.std(reference))
    error = float(np.sqrt(np.mean(difference**2)))
    return error / spread if spread > 0 else (0.0 if error == 0 else float("inf"))


def _cosine(reference: np.ndarray, output: np.ndarray) -> float:
    a, b = reference.ravel(), output.ravel()
    norms = float(np.linalg.norm(a) * np.linalg.norm(b))
    return float(np.dot(a, b) / norms) if norms > 0 else float(np.array_equal(a, b))


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
