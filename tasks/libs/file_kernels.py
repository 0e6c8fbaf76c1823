"""The pruned kernels found again in a deployable file: each kernel the sanity check measured is
matched to the file's tensor of its shape (by layer name, or as the one tensor left of that shape)
and must hold the Keras kernel's share of zeros, within the tolerance either way."""

from __future__ import annotations

from pathlib import Path

from pruneflow.tasks.core.errors import PruneflowError
from pruneflow.tasks.libs.artifacts import SanityReport, WeightTensor
from pruneflow.tasks.libs.sparsity import TensorSparsity
from pruneflow.tasks.specs.formats import FormatName


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


def check_kernels(fmt: FormatName, sanity: SanityReport, weights: list[WeightTensor], model_path: Path) -> list[TensorSparsity]:
    """The pruned kernels as found in the file; raise unless each is there with its zeros and its weights."""
    matched = match_kernels(sanity, weights)
    missing = [f"{k.layer} {k.weight}" for k, m in zip(sanity.tensors, matched) if m is None]
    if missing:
        raise PruneflowError(
            f"export {fmt} of {model_path}: no single tensor of the file matches {', '.join(missing)} (by "
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


