"""What a sparsity check measures of each pruned weight tensor: the sanity check's report, and
the export's check of each file against it."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from tasks.store import StoredArtifact


class TensorSparsity(BaseModel):
    """The measured sparsity of one prunable weight tensor."""

    model_config = ConfigDict(frozen=True)

    layer: str
    weight: str
    size: int
    zeros: int
    sparsity: float
    passed: bool
    shape: list[int] = []  # as Keras holds it


class SanityReport(StoredArtifact):
    """Per-tensor sparsity against the schedule's final sparsity (also in sanity.json)."""

    expected: float
    tolerance: float
    tensors: list[TensorSparsity]

    @property
    def failed(self) -> list[TensorSparsity]:
        return [tensor for tensor in self.tensors if not tensor.passed]

    def table(self) -> str:
        return sparsity_table(self.tensors)


def sparsity_table(tensors: list[TensorSparsity]) -> str:
    """One line per tensor: its layer, weight, size, sparsity and whether it passed."""
    lines = [f"{'layer':<40} {'weight':<18} {'size':>9} {'sparsity':>9}  ok"]
    for t in tensors:
        lines.append(f"{t.layer:<40} {t.weight:<18} {t.size:>9} {t.sparsity:>9.4f}  {'yes' if t.passed else 'NO'}")
    return "\n".join(lines)
