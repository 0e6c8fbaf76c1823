"""What a sparsity check measures of each weight tensor: the sanity check's report, in three
groups (pruned, left dense by choice, left dense because TFMOT cannot prune it), and the
export's check of each file against it."""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict

from tasks.selection import GROUP_TITLES, Group, PlannedLayer
from tasks.store import StoredArtifact


def tfmot_zeros(size: int, sparsity: float) -> int:
    """The zeros TFMOT leaves among `size` weights (or blocks) at `sparsity`: it keeps
    max(round(size * (1 - sparsity)), 1), computed in float32 (pruning_impl._update_mask)."""
    keep = max(int(np.round(np.float32(size) * (np.float32(1.0) - np.float32(sparsity)))), 1)
    return size - keep


class TensorSparsity(BaseModel):
    """The measured sparsity of one pruned weight tensor."""

    model_config = ConfigDict(frozen=True)

    layer: str
    weight: str
    size: int
    zeros: int
    sparsity: float
    passed: bool
    shape: list[int] = []  # as Keras holds it
    target: float = 0.0
    # m_by_n: groups holding more non-zeros than allowed; block: blocks partly zero. None: no structure.
    structure_violations: int | None = None
    blocks_zero: float | None = None  # block sparsity: the share of blocks all zero, what the target is met by


    @property
    def measured(self) -> float:
        """What the target is compared with: the share of zero blocks for block sparsity, else of zero weights."""
        return self.sparsity if self.blocks_zero is None else self.blocks_zero


class DenseTensor(BaseModel):
    """A weight tensor the run leaves dense, and why."""

    model_config = ConfigDict(frozen=True)

    layer: str
    weight: str
    size: int
    zeros: int
    group: Group
    reason: str


class SanityReport(StoredArtifact):
    """Per-tensor sparsity against each pruned layer's target (also in sanity.json), and every
    tensor left dense."""

    expected: float  # the schedule's final sparsity: the target of layers without their own
    tolerance: float
    tensors: list[TensorSparsity]
    dense: list[DenseTensor] = []
    structure: str = ""  # "2:4 (m_by_n)", "block 1x4", or "" for unstructured
    layers: list[PlannedLayer] = []  # the plan: every layer's group, weightless ones (Rescaling) included

    @property
    def failed(self) -> list[TensorSparsity]:
        return [tensor for tensor in self.tensors if not tensor.passed]

    def params(self) -> dict[str, int]:
        """Weights in each group, every group present."""
        counts = {group: 0 for group in GROUP_TITLES}
        counts["pruned"] = sum(t.size for t in self.tensors)
        for tensor in self.dense:
            counts[tensor.group] += tensor.size
        return counts

    def shares(self) -> dict[str, float]:
        """Each group's share of the model's weights: what pruning could reach is the pruned share."""
        counts = self.params()
        total = sum(counts.values())
        return {group: n / total if total else 0.0 for group, n in counts.items()}

    def table(self) -> str:
        return sparsity_table(self.tensors)

    def group_table(self) -> str:
        """One line per group: tensors, weights, share of the model's weights."""
        counts, shares = self.params(), self.shares()
        tensors = {group: sum(t.group == group for t in self.dense) for group in GROUP_TITLES}
        tensors["pruned"] = len(self.tensors)
        lines = [f"{'group':<36} {'tensors':>7} {'weights':>10} {'share':>7}"]
        for group, title in GROUP_TITLES.items():
            lines.append(f"{title:<36} {tensors[group]:>7} {counts[group]:>10} {shares[group]:>7.1%}")
        return "\n".join(lines)

    def layer_counts(self) -> str:
        """Layers per group, those left dense counted by class: '3 pruned; left dense by choice:
        Conv2D x1; TFMOT cannot prune: BatchNormalization x2, Rescaling x1'."""
        parts = [f"{sum(layer.group == 'pruned' for layer in self.layers)} pruned"]
        for group in ("dense_by_choice", "cannot_prune"):
            kinds: dict[str, int] = {}
            for layer in self.layers:
                if layer.group == group:
                    kinds[layer.kind] = kinds.get(layer.kind, 0) + 1
            if kinds:
                parts.append(f"{GROUP_TITLES[group]}: {', '.join(f'{k} x{n}' for k, n in sorted(kinds.items()))}")
        return "; ".join(parts)

    def dense_table(self) -> str:
        """One line per tensor left dense: its layer, weight, size, group and reason."""
        lines = [f"{'layer':<48} {'weight':<18} {'size':>9}  why"]
        for t in self.dense:
            lines.append(f"{t.layer:<48} {t.weight:<18} {t.size:>9}  {GROUP_TITLES[t.group]}: {t.reason}")
        return "\n".join(lines)


def sparsity_table(tensors: list[TensorSparsity]) -> str:
    """One line per tensor: its layer, weight, size, target, sparsity (of blocks, for block
    sparsity), structure and whether it passed."""
    lines = [f"{'layer':<48} {'weight':<18} {'size':>9} {'target':>7} {'sparsity':>9} {'structure':>9}  ok"]
    for t in tensors:
        structure = "-" if t.structure_violations is None else ("ok" if not t.structure_violations else f"{t.structure_violations} bad")
        lines.append(
            f"{t.layer:<48} {t.weight:<18} {t.size:>9} {t.target:>7.4f} {t.measured:>9.4f} {structure:>9}  "
            f"{'yes' if t.passed else 'NO'}"
        )
    return "\n".join(lines)
