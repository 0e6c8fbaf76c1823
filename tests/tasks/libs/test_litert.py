"""LiteRT runs the TFLite files: XNNPACK where it can prepare the file, its built-in kernels where not."""

import numpy as np

from pruneflow.tasks.libs import tflite
from pruneflow.tasks.libs.litert import Predictor, allocated, timed_call
from pruneflow.tasks.specs.config import ExportSpec
from pruneflow.tasks.specs.formats import FORMATS
from tests.helpers.data import IMAGE_SIZE
from tests.helpers.models import build_tiny_cnn

SPEC = ExportSpec(formats=("int8_sparse",), representative_images=8, int8_input_type="int8", int8_output_type="int8")


def half_zero_cnn():
    """The tiny CNN with half of every kernel zero, as pruning to 0.5 leaves it: its kernels are
    stored sparse in the *_sparse formats."""
    model = build_tiny_cnn()
    rng = np.random.default_rng(0)
    for layer in model.layers:
        if hasattr(layer, "kernel"):
            kernel = layer.kernel.numpy()
            kernel.reshape(-1)[rng.permutation(kernel.size)[: kernel.size // 2]] = 0.0
            layer.kernel.assign(kernel)
    return model


def test_an_int8_file_xnnpack_cannot_prepare_runs_on_the_built_in_kernels_and_says_so(tmp_path):
    model = half_zero_cnn()
    images = np.random.default_rng(1).random((8, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.float32)
    paths = {}
    for name in ("float32", "int8_sparse"):
        paths[name] = tmp_path / FORMATS[name].file
        paths[name].write_bytes(tflite.convert(model, FORMATS[name], SPEC, images))
    assert allocated(paths["float32"], threads=1)[1]  # XNNPACK runs the float file
    assert not allocated(paths["int8_sparse"], threads=1)[1]  # LiteRT 2.3's XNNPACK refuses its sparse int8 weights
    assert timed_call(paths["float32"], images[:1], 1).note == ""
    assert timed_call(paths["float32"], images, 1)() is None  # resized to the batch of 8, invoked
    note = timed_call(paths["int8_sparse"], images[:1], 1).note
    assert note == "model_int8_sparse.tflite runs on LiteRT's built-in kernels: XNNPACK cannot prepare it"
    # On its built-in kernels the file still computes what the Keras model does, at int8 precision.
    predicted = Predictor(paths["int8_sparse"], threads=1, batch=4)(images)
    assert np.abs(predicted - model(images).numpy()).max() < 0.1 * np.abs(model(images).numpy()).max()
