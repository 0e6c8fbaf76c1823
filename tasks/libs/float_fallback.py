"""The int8_fallback file: int8, with the layers int8 hurts most left in float. Which layers
follows export.float_fallback: a count of the worst (quantization_error's table, worst first),
names or patterns, or `auto`: as few layers as keep the file's validation accuracy within
export.fallback_max_loss points of the Keras model's, those that give back most first (see _auto)."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from pruneflow.tasks.core.errors import PruneflowError
from pruneflow.tasks.libs.artifacts import FloatFallback, LayerError
from pruneflow.tasks.libs.litert import Predictor
from pruneflow.tasks.libs.quantization_error import Int8Debugger
from pruneflow.tasks.libs.selection import matches, walk
from pruneflow.tasks.specs.config import ExportSpec, FallbackSpec


def convert_with_fallback(
    model, spec: ExportSpec, calibration: np.ndarray, errors: list[LayerError], fallback: FallbackSpec,
    validation: tuple[np.ndarray, np.ndarray] | None,
) -> tuple[bytes, FloatFallback]:
    """The int8_fallback file's bytes and the layers it keeps in float.

    Args:
        errors: the model's int8 error by op, worst first (quantization_error).
        validation: images and their label indices, what `auto` measures accuracy on (None otherwise).

    Raises:
        PruneflowError: a pattern of export.float_fallback that names no quantized layer.
    """
    debugger = Int8Debugger(model, spec, calibration)
    ranked = [e for e in errors if e.rmse > 0]  # an exact op (pooling, reshape) gains nothing in float
    if fallback.layers == "auto":
        return _auto(model, debugger, ranked, fallback.max_loss, validation)
    if isinstance(fallback.layers, int):
        chosen, rule = ranked[: fallback.layers], f"the {fallback.layers} worst"
    else:
        chosen, rule = _named(model, ranked, fallback.layers), ", ".join(fallback.layers)
    return debugger.with_float([e.tensor for e in chosen]), FloatFallback(
        rule=rule, layers=[e.layer for e in chosen], tensors=[e.tensor for e in chosen],
    )


def _named(model, ranked: list[LayerError], patterns: list[str]) -> list[LayerError]:
    layers = dict(walk(model))

    def named(pattern: str, error: LayerError) -> bool:
        path = error.layer.removesuffix(" (output)")
        return path in layers and matches(pattern, path, layers[path])

    unmatched = [p for p in patterns if not any(named(p, e) for e in ranked)]
    if unmatched:
        raise PruneflowError(
            f"export.float_fallback {unmatched} match no quantized layer; those are: "
            f"{', '.join(dict.fromkeys(e.layer for e in ranked))}."
        )
    return [e for e in ranked if any(named(p, e) for p in patterns)]


def _auto(model, debugger: Int8Debugger, ranked: list[LayerError], max_loss: float,
          validation: tuple[np.ndarray, np.ndarray]) -> tuple[bytes, FloatFallback]:
    """The fewest layers in float that keep the file within `max_loss` points of the Keras model on
    `validation`. The layers are ranked by what each one, alone in float, gives back: how close the
    file's outputs come to the Keras model's (a layer's own error does not say how much of it the
    rest of the model amplifies); then counts 0, 1, 2, 4, ... of the best are tried until one holds,
    and halved back to the smallest that holds (each try a conversion and a validation pass)."""
    images, labels = validation
    expected = model.predict(images, verbose=0)
    reference = _accuracy(expected, labels)
    tried: dict[int, tuple[bytes, float]] = {}

    def holds(count: int) -> bool:
        if count not in tried:
            data = debugger.with_float([e.tensor for e in ranked[:count]])
            tried[count] = data, _accuracy(_predict(data, images), labels)
        return 100 * (reference - tried[count][1]) <= max_loss

    if not holds(0):  # plain int8 within the loss needs no ranking (one conversion a layer)
        ranked = by_recovery(ranked, lambda tensors: _predict(debugger.with_float(tensors), images), expected)
    count = fewest_holding(len(ranked), holds)
    chosen = ranked[:count]
    data, accuracy = tried[count]
    return data, FloatFallback(
        rule=f"auto, within {max_loss:g} points", layers=[e.layer for e in chosen],
        tensors=[e.tensor for e in chosen], accuracy=accuracy, reference=reference, reached=holds(count),
    )


def by_recovery(
    ranked: list[LayerError], outputs_with_float: Callable[[list[str]], np.ndarray], expected: np.ndarray
) -> list[LayerError]:
    """The layers ordered by how close the file's outputs come to `expected` (mean squared
    difference) with each one alone in float; layers that recover equally keep their order."""
    def gap(tensors: list[str]) -> float:
        return float(np.mean((outputs_with_float(tensors) - expected) ** 2))

    gaps = [gap([e.tensor]) for e in ranked]
    return [ranked[i] for i in sorted(range(len(ranked)), key=lambda i: gaps[i])]


def fewest_holding(total: int, holds: Callable[[int], bool]) -> int:
    """The smallest count in 0..total for which `holds`, if it holds from some count on: 0, 1, 2,
    4, ... tried until one holds, then halved back between the last that failed and it; `total`
    if none holds."""
    low, high = -1, 0  # the largest count known to fail, the count tried last
    while not holds(high) and high < total:
        low, high = high, min(total, max(1, 2 * high))
    while high - low > 1 and holds(high):
        middle = (low + high) // 2
        low, high = (low, middle) if holds(middle) else (middle, high)
    return high


def _accuracy(predictions: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(np.argmax(predictions, axis=1) == labels))


def _predict(data: bytes, images: np.ndarray) -> np.ndarray:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "candidate.tflite"
        path.write_bytes(data)
        return Predictor(path, threads=1, batch=32)(images)
