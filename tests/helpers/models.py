"""Tiny Keras models in every shape and save format, the assertions on their weights, and
fabricated outcomes for the pure functions of a sweep."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pruneflow.tasks.specs.formats import FORMATS
from tests.helpers.data import IMAGE_SIZE, make_config_dict

# The model shapes and save formats the stage tests run over, as TFMOT's tests do: the same
# three prunable kernels (a Conv2D and two Dense) built as a Sequential model, a functional
# model, and a functional model whose convolution sits in a nested functional "backbone".
MODEL_KINDS = ("sequential", "functional", "nested")

SAVE_FORMATS = (".h5", ".keras")

MODEL_VARIANTS = [(kind, suffix) for kind in MODEL_KINDS for suffix in SAVE_FORMATS]

# strip saves the pruned model as .h5 whatever the baseline's format: what comes after it (the
# exports, quantization-aware training) is the same work for both formats of a shape, so its tests
# take one variant a shape (`@ONE_FORMAT_A_SHAPE` on a test using the pruned_variant fixture).
ONE_FORMAT_A_SHAPE = pytest.mark.parametrize(
    "pruned_variant", [(kind, ".h5") for kind in MODEL_KINDS], indirect=True, ids=[f"{kind}.h5" for kind in MODEL_KINDS]
)

PRUNABLE_KERNELS = 3


def build_tiny_cnn(n_classes: int = 2, channels: int = 3, kind: str = "sequential"):
    from pruneflow.tasks.core.runtime import keras

    layers = keras.layers
    shape = (IMAGE_SIZE, IMAGE_SIZE, channels)
    if kind == "sequential":
        return keras.Sequential([
            keras.Input(shape=shape), layers.Conv2D(8, 3, activation="relu"), layers.MaxPooling2D(),
            layers.Flatten(), layers.Dense(32, activation="relu"), layers.Dense(n_classes, activation="softmax"),
        ])
    inputs = keras.Input(shape=shape)
    if kind == "functional":
        features = layers.MaxPooling2D()(layers.Conv2D(8, 3, activation="relu")(inputs))
    elif kind == "nested":
        image = keras.Input(shape=shape)
        backbone = keras.Model(image, layers.MaxPooling2D()(layers.Conv2D(8, 3, activation="relu")(image)), name="backbone")
        features = backbone(inputs)  # called without training=False, so that TFMOT prunes it
    else:
        raise ValueError(f"unknown model kind {kind!r}; one of {MODEL_KINDS}")
    hidden = layers.Dense(32, activation="relu")(layers.Flatten()(features))
    return keras.Model(inputs, layers.Dense(n_classes, activation="softmax")(hidden), name=f"tiny_{kind}")


def train_tiny_baseline(data: Path, out_path: Path, kind: str = "sequential") -> Path:
    """Train build_tiny_cnn(kind=kind) on the tiny dataset for a few epochs and save it (the
    suffix of `out_path`, .h5 or .keras, picks the format)."""
    from pruneflow.tasks.demo import train_baseline
    from pruneflow.tasks.specs.config import parse_config

    config = parse_config(make_config_dict(data, out_path, out_path.parent / "unused"))
    return train_baseline(
        config, epochs=4, out_path=out_path, build_model=lambda: build_tiny_cnn(kind=kind), library="tf_keras"
    )


def with_a_dead_channel(baseline, out, huge_weight: bool):
    """The baseline with its convolution's channel 0 always zero and, with `huge_weight`, the hidden
    Dense layer's weights from that zero input set to 1e4: the Keras model computes exactly what it
    does without them, but int8 stores each of that layer's output units with a scale of 1e4 / 127,
    so every other weight of the layer rounds to zero."""
    from pruneflow.tasks.libs.models import ModelFile, load_model, save_model

    model = load_model(baseline)
    conv, hidden = model.layers[0], model.layers[3]
    kernel, bias = conv.get_weights()
    kernel[..., 0], bias[0] = 0.0, -1.0  # channel 0 of the convolution: ReLU(-1), zero on every image
    conv.set_weights([kernel, bias])
    weights, hidden_bias = hidden.get_weights()
    if huge_weight:
        weights[0, :] = 1e4  # Flatten's input 0 is channel 0 at the first position: always zero
    hidden.set_weights([weights, hidden_bias])
    save_model(model, out)
    return ModelFile.of(out), model.layers[3].name


def sparsity(values: np.ndarray) -> float:
    return 1.0 - np.count_nonzero(values) / values.size


def assert_kernels_sparse(layers, expected: float, tolerance: float = 0.02) -> None:
    """Every Conv2D and Dense kernel among `layers` has `expected` zeros, within tolerance."""
    kernels = [layer.kernel.numpy() for layer in layers if hasattr(layer, "kernel")]
    assert kernels, "no layer has a kernel"
    measured = [sparsity(k) for k in kernels]
    assert all(abs(s - expected) <= tolerance for s in measured), f"kernel sparsities {measured}, expected {expected}"


def assert_same_predictions(model_a, model_b, images, atol: float = 1e-5) -> None:
    a = model_a(images, training=False).numpy()
    b = model_b(images, training=False).numpy()
    np.testing.assert_allclose(a, b, atol=atol)


def target_result(target: float, accuracy: float, zip_bytes: int, *, baseline_accuracy: float = 0.95,
                  model: Path = Path("/nowhere/pruned.h5"), seconds: float = 1.0, latency_ms: float = 1.0,
                  files: dict[str, tuple[float, int, float]] | None = None):
    """A sweep target's result with the given figures, for tests of what is decided from them.

    Args:
        accuracy, zip_bytes, latency_ms: the pruned Keras model's.
        files: export format -> (accuracy, zip bytes, latency in ms) of the pruned model's file in
            that format; the baseline's files are 40,000 B zipped, with the baseline's accuracy.
    """
    from pruneflow.tasks.libs.artifacts import (
        Evaluation,
        ExportedFile,
        ExportedModels,
        ExportEvaluation,
        FileEvaluation,
        LatencyReport,
        ModelSize,
        SanityReport,
        SizeReport,
        Timing,
        TrainedModel,
    )
    from pruneflow.tasks.libs.outcome import TargetResult
    from pruneflow.tasks.libs.sparsity import TensorSparsity
    from pruneflow.tasks.specs.config import ConstantSchedule

    folder = model.parent
    size = 10_000
    zeros = round(size * target)
    files = files or {}
    dense = list(dict.fromkeys(FORMATS[fmt].dense for fmt in files))

    def exported(fmt: str, zipped: int) -> ExportedFile:
        return ExportedFile(format=fmt, file=f"model_{fmt}.tflite", raw_bytes=2 * zipped, zip_bytes=zipped,
                            xz_bytes=zipped, weights=[])

    def timing(owner: str, fmt: str, ms: float) -> Timing:
        return Timing(model=owner, format=fmt, median_ms=ms, p90_ms=1.2 * ms, runs=10)

    return TargetResult(
        target=target, pruned_model=model, schedule=ConstantSchedule(target_sparsity=target, end_step=10),
        baseline=Evaluation(folder=folder, accuracy=baseline_accuracy, loss=0.1, examples=100),
        pruned=Evaluation(folder=folder, accuracy=accuracy, loss=0.2, examples=100),
        sanity=SanityReport(folder=folder, expected=target, tolerance=0.01, tensors=[
            TensorSparsity(layer="dense", weight="kernel", size=size, zeros=zeros, sparsity=zeros / size, passed=True)
        ]),
        sizes=SizeReport(
            folder=folder,
            baseline=ModelSize(file="baseline.h5", raw_bytes=50_000, zip_bytes=40_000, xz_bytes=39_000,
                               weights=size, nonzero_weights=size),
            pruned=ModelSize(file="pruned.h5", raw_bytes=50_000, zip_bytes=zip_bytes, xz_bytes=zip_bytes,
                             weights=size, nonzero_weights=size - zeros),
        ),
        training=TrainedModel(folder=folder, epochs=2, resumed_from_epoch=0, steps=10, seconds=seconds,
                              final_val_accuracy=accuracy),
        baseline_exports=[ExportedModels(folder=folder, files=[exported(fmt, 40_000) for fmt in dense])],
        baseline_export_evaluation=ExportEvaluation(folder=folder, files=[
            FileEvaluation(format=fmt, accuracy=baseline_accuracy, agreement=1.0, examples=100) for fmt in dense
        ]),
        exports=[ExportedModels(folder=folder, files=[exported(fmt, z) for fmt, (_, z, _) in files.items()])],
        export_evaluation=ExportEvaluation(folder=folder, files=[
            FileEvaluation(format=fmt, accuracy=a, agreement=1.0, examples=100) for fmt, (a, _, _) in files.items()
        ]),
        latency=LatencyReport(
            folder=folder, machine="test machine", threads=1, sparse_kernels="",
            timings=[timing("baseline", "keras_h5", 1.0), timing("pruned", "keras_h5", latency_ms)]
            + [timing("baseline", fmt, 0.1) for fmt in dense]
            + [timing("pruned", fmt, ms) for fmt, (_, _, ms) in files.items()],
        ),
    )
