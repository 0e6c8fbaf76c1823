"""The sanity_check stage: every prunable weight tensor of the stripped model reached the target sparsity."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tasks.errors import PruneflowError
from tasks.files import write_json
from tasks.log import run_logger
from tasks.models import load_model
from tasks.prune import StrippedModel, TrainedModel
from tasks.sparsity import SanityReport, TensorSparsity
from tasks.stage import Stage


def prunable_tensors(wrapped, stripped, prefix: str = "") -> list[tuple[str, str, np.ndarray]]:
    """(layer path, weight name, values in the stripped model) for every tensor TFMOT pruned.

    The wrapped model says which tensors are prunable; the values come from the stripped model,
    the one that ships. Nested models are walked too: a base model called with training=False
    inside them is wrapped but never pruned, and this is where that shows.
    """
    from tasks.runtime import PruneLowMagnitude, keras

    found = []
    for layer in wrapped.layers:
        if isinstance(layer, PruneLowMagnitude):
            inner = layer.layer
            twin = stripped.get_layer(inner.name)
            for weight in inner.get_prunable_weights():
                index = next(i for i, w in enumerate(inner.weights) if w is weight)
                name = weight.name.split("/")[-1].split(":")[0]
                found.append((prefix + inner.name, name, twin.weights[index].numpy()))
        elif isinstance(layer, keras.Model):
            found += prunable_tensors(layer, stripped.get_layer(layer.name), f"{prefix}{layer.name}/")
    return found


def measure_sparsity(
    wrapped_path: Path, stripped_path: Path, expected: float, tolerance: float, folder: Path = Path(".")
) -> SanityReport:
    """Measure each prunable tensor's fraction of zeros and compare it with `expected`."""
    from tasks.runtime import keras

    keras.backend.clear_session()
    wrapped = load_model(wrapped_path, pruning_wrappers=True)
    stripped = load_model(stripped_path)
    tensors = []
    for layer, weight, values in prunable_tensors(wrapped, stripped):
        zeros = int(values.size - np.count_nonzero(values))
        sparsity = zeros / values.size
        tensors.append(
            TensorSparsity(
                layer=layer, weight=weight, size=int(values.size), zeros=zeros, sparsity=sparsity,
                passed=abs(sparsity - expected) <= tolerance, shape=list(values.shape),
            )
        )
    return SanityReport(folder=folder, expected=expected, tolerance=tolerance, tensors=tensors)


def require_target_reached(report: SanityReport, model_path: Path) -> None:
    """Raise, naming every layer that missed, unless each prunable tensor is within tolerance."""
    if not report.tensors:
        raise PruneflowError(f"{model_path}: the model has no prunable weight tensor (no Conv or Dense kernel)")
    if report.failed:
        missed = ", ".join(f"{t.layer} {t.weight} at {t.sparsity:.4f}" for t in report.failed)
        raise PruneflowError(
            f"sanity check: {len(report.failed)} of {len(report.tensors)} prunable tensors of {model_path} "
            f"missed the target sparsity {report.expected} (tolerance {report.tolerance}): {missed}. "
            "A nested base model called with training=False is never pruned: call it without training=False."
        )


def check_sparsity(
    out: Path, trained: TrainedModel, stripped: StrippedModel, expected: float, tolerance: float
) -> SanityReport:
    """Fail, naming the layers, unless every prunable tensor is within tolerance of `expected`.

    The per-tensor table is logged either way, and stored as sanity.json when the check passes.
    """
    report = measure_sparsity(trained.wrapped_model, stripped.model, expected, tolerance, out)
    run_logger().info("Sparsity per prunable tensor (target %.4f):\n%s", expected, report.table())
    require_target_reached(report, stripped.model)
    write_json(out / "sanity.json", report.model_dump(mode="json", exclude={"folder", "digest"}))
    return report


sanity_check = Stage(
    "sanity_check", check_sparsity,
    describe=lambda report: f"all {len(report.tensors)} prunable tensors within {report.tolerance} of {report.expected}",
)
