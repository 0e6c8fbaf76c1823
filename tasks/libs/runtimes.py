"""The runtimes that run deployable files, one entry each: how a file is run on batches of images
for its accuracy, and how one invocation on a single image is made for its latency.

A format names its runtime (pruneflow.tasks.specs.formats); evaluation, latency and the champion
look the runtime up here instead of branching on the format.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import numpy as np

from pruneflow.tasks.libs import keras3, litert, onnx
from pruneflow.tasks.libs.models import load_model
from pruneflow.tasks.libs.timing import Invocation, keras_call

# (path, threads, batch) -> a function from images (float32 in [0, 1]) to one row of outputs per image
PredictorFactory = Callable[[Path, int, int], Callable[[np.ndarray], np.ndarray]]
# (path, images, threads) -> one invocation on that batch of images, to be timed
TimedFactory = Callable[[Path, np.ndarray, int], Invocation]


@dataclasses.dataclass(frozen=True)
class Runtime:
    """One runtime.

    Attributes:
        name: the name formats give in their `runtime`.
        predictor: runs a file on batches of images, for accuracy and agreement.
        timed: one invocation of a file on a batch of images (one image, or latency_batch), for latency.
        packages: the distributions whose versions change what it computes: they are in the key of
            every stage that runs it.
    """

    name: str
    predictor: PredictorFactory
    timed: TimedFactory
    packages: tuple[str, ...] = ()


def _keras_predictor(path: Path, threads: int, batch: int) -> Callable[[np.ndarray], np.ndarray]:
    model = load_model(path)  # a file pruneflow wrote (the stripped model, a promoted one)
    return lambda images: model(images, training=False).numpy()


def _keras_timed(path: Path, images: np.ndarray, threads: int) -> Invocation:
    return Invocation(keras_call(load_model(path), images))


RUNTIMES: dict[str, Runtime] = {
    runtime.name: runtime
    for runtime in (
        # TensorFlow's own threads; `threads` is the interpreters' setting.
        Runtime("keras", _keras_predictor, _keras_timed),
        Runtime("litert", litert.Predictor, litert.timed_call, packages=("ai-edge-litert",)),
        Runtime("onnxruntime", onnx.predictor, onnx.timed_call, packages=("onnxruntime",)),
        Runtime("keras3", keras3.predictor, keras3.timed_call, packages=("keras",)),
    )
}


def runtime_packages() -> tuple[str, ...]:
    """Every runtime's packages: what a stage that may run any format has in its key."""
    return tuple(dict.fromkeys(package for runtime in RUNTIMES.values() for package in runtime.packages))
