"""The layer_sensitivity stage: one layer pruned alone by magnitude, without fine-tuning, to a few
sparsities, with the validation accuracy the model keeps (the proposal: libs.sensitivity)."""

from __future__ import annotations

from pathlib import Path

from pruneflow.tasks.core.errors import PruneflowError
from pruneflow.tasks.core.files import write_json
from pruneflow.tasks.core.stage import Stage
from pruneflow.tasks.libs.artifacts import LayerSensitivity, PreparedDataset
from pruneflow.tasks.libs.dataset import load_split
from pruneflow.tasks.libs.models import ModelFile, evaluate
from pruneflow.tasks.libs.selection import prunable_weights, walk
from pruneflow.tasks.libs.sensitivity import magnitude_pruned


def measure_layer(
    out: Path, model: ModelFile, dataset: PreparedDataset, layer: str, sparsities: tuple[float, ...], batch_size: int
) -> LayerSensitivity:
    """Prune `layer` alone to each sparsity (no fine-tuning) and measure validation accuracy."""
    from pruneflow.tasks.core.runtime import keras

    keras.backend.clear_session()
    loaded = model.load()
    found = dict(walk(loaded)).get(layer)
    weights = prunable_weights(found) if found is not None else None
    if not weights:
        raise PruneflowError(f"{model.path}: no layer {layer!r} with weights TFMOT prunes")
    originals = [weight.numpy() for weight in weights]
    data = load_split(dataset, "val", batch_size)
    dense_accuracy, _ = evaluate(loaded, data)
    accuracies = []
    for sparsity in sparsities:
        for weight, values in zip(weights, originals):
            weight.assign(magnitude_pruned(values, sparsity))
        accuracies.append(evaluate(loaded, data)[0])
    for weight, values in zip(weights, originals):
        weight.assign(values)
    result = LayerSensitivity(
        folder=out, layer=layer, weights=sum(v.size for v in originals), sparsities=list(sparsities),
        accuracies=accuracies, dense_accuracy=dense_accuracy,
    )
    write_json(out / "sensitivity.json", result.model_dump(mode="json", exclude={"folder", "digest"}))
    return result


def describe_layer(result: LayerSensitivity) -> str:
    drops = ", ".join(f"{s:g}: {d:+.2f}" for s, d in zip(result.sparsities, result.drops()))
    return f"{result.layer} ({result.weights} weights) accuracy drop in points at {drops}"


layer_sensitivity = Stage("layer_sensitivity", measure_layer, describe=describe_layer)
