"""Latency: every model file timed side by side, and whether XNNPACK's sparse kernels could apply."""

import numpy as np

from pruneflow.tasks.libs.models import ModelFile
from pruneflow.tasks.libs.timing import sparse_kernels_note, time_side_by_side
from pruneflow.tasks.specs.config import ExportSpec, ImageShape, LatencySpec
from pruneflow.tasks.stages.export_tflite import export_tflite
from pruneflow.tasks.stages.measure_latency import time_models
from tests.helpers.data import IMAGE_SIZE


def test_every_keras_model_and_file_is_timed_with_the_configured_runs(tiny_baseline, tiny_prepared, tmp_path):
    """Timing does not depend on the weights: the tiny baseline stands for both models."""
    model = ModelFile.of(tiny_baseline)
    spec = ExportSpec(formats=("float32", "int8"), representative_images=8, int8_input_type="int8", int8_output_type="int8")
    folders = {name: tmp_path / name for name in ("baseline", "pruned", "latency")}
    for folder in folders.values():
        folder.mkdir()
    baseline = export_tflite(folders["baseline"], model, tiny_prepared, spec, None, None)
    pruned = export_tflite(folders["pruned"], model, tiny_prepared, spec, None, None)
    report = time_models(
        folders["latency"], model, [baseline], model, [pruned],
        ImageShape(height=IMAGE_SIZE, width=IMAGE_SIZE, channels=3),
        LatencySpec(runs=23, warmup=2, threads=1, batch=16, batch_runs=7), machine="the test machine",
    )
    files = [(model, fmt) for model in ("baseline", "pruned") for fmt in ("keras_h5", "float32", "int8")]
    assert [(t.model, t.format, t.batch) for t in report.timings] == [
        *((model, fmt, 1) for model, fmt in files), *((model, fmt, 16) for model, fmt in files)
    ]
    assert all(t.runs == (23 if t.batch == 1 else 7) and 0 < t.median_ms <= t.p90_ms for t in report.timings)
    assert all(report.batched(model, fmt).batch == 16 and report.of(model, fmt).batch == 1 for model, fmt in files)
    assert report.machine == "the test machine" and report.threads == 1
    assert "has none" in report.sparse_kernels  # a 3x3 convolution and two Dense layers
    assert (folders["latency"] / "latency.json").is_file()


def test_models_take_turns_so_each_gets_exactly_its_runs():
    calls = []
    timings = time_side_by_side(
        {("baseline", "a"): lambda: calls.append("a"), ("pruned", "b"): lambda: calls.append("b")},
        LatencySpec(runs=25, warmup=3, threads=1),
    )
    assert [t.runs for t in timings] == [25, 25]
    assert calls[:6] == ["a"] * 3 + ["b"] * 3  # warm-up, then turns of 10
    assert calls[6:36] == ["a"] * 10 + ["b"] * 10 + ["a"] * 10
    assert len(calls) == 56


def mobilenet_like(pointwise_zeros: float, stem: bool = True):
    """A stem XNNPACK's sparse subgraph accepts (or not), a 1x1 convolution, global pooling."""
    from pruneflow.tasks.core.runtime import keras

    layers = keras.layers
    inputs = keras.Input((IMAGE_SIZE, IMAGE_SIZE, 3))
    x = layers.Conv2D(8, 3, strides=2, padding="valid")(layers.ZeroPadding2D(1)(inputs)) if stem else (
        layers.Conv2D(8, 3, padding="same")(inputs))
    pointwise = layers.Conv2D(16, 1)
    x = layers.GlobalAveragePooling2D(keepdims=True)(layers.ReLU()(pointwise(layers.ReLU()(x))))
    model = keras.Model(inputs, layers.Dense(2)(layers.Flatten()(x)))
    kernel = pointwise.kernel.numpy()
    kernel.reshape(-1)[: round(kernel.size * pointwise_zeros)] = 0.0
    pointwise.kernel.assign(kernel)
    return model


def test_sparse_kernels_are_said_to_apply_only_where_xnnpack_would_use_them(tmp_path):
    from pruneflow.tasks.libs.artifacts import ExportedFile, ExportedModels

    sparse_file = ExportedModels(folder=tmp_path, files=[ExportedFile(
        format="float32_sparse", file="m.tflite", raw_bytes=1, zip_bytes=1, xz_bytes=1, weights=[])])
    dense_only = ExportedModels(folder=tmp_path, files=[])
    assert "hold 50% zeros, under the 67%" in sparse_kernels_note(mobilenet_like(0.5), [sparse_file])
    assert "Could not find `Conv2D 3x3`" in sparse_kernels_note(mobilenet_like(0.8, stem=False), [sparse_file])
    assert sparse_kernels_note(mobilenet_like(0.8), [sparse_file]).startswith("XNNPACK's sparse kernels can apply")
    assert "not exported" in sparse_kernels_note(mobilenet_like(0.8), [dense_only])


def test_a_model_whose_input_size_is_left_open_is_timed_at_the_dataset_image_size(tiny_baseline, tiny_prepared, tmp_path):
    """A model whose input size is left open is timed at the dataset's image size."""
    from pruneflow.tasks.core.runtime import keras
    from pruneflow.tasks.libs.models import save_model

    layers = keras.layers
    inputs = keras.Input((None, None, 3))
    model = keras.Model(inputs, layers.Dense(2)(layers.GlobalAveragePooling2D()(layers.Conv2D(4, 3)(inputs))))
    save_model(model, tmp_path / "open.h5")
    file = ModelFile.of(tmp_path / "open.h5")
    empty = export_tflite(tmp_path, file, tiny_prepared, ExportSpec(
        formats=(), representative_images=1, int8_input_type="int8", int8_output_type="int8"), None, None)
    (tmp_path / "latency").mkdir()
    report = time_models(tmp_path / "latency", file, [empty], file, [empty], ImageShape(height=12, width=20, channels=3),
                         LatencySpec(runs=5, warmup=0, threads=1), machine="m")
    assert [t.format for t in report.timings] == ["keras_h5", "keras_h5"] and np.isfinite(report.timings[0].median_ms)
