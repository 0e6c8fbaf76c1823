"""What a sparsity check measures of one weight tensor (TFMOT's zero count, an m_by_n or block
structure), and the tables that show it."""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict

from pruneflow.tasks.libs.selection import (
    Group,
    LayerPlan,
)


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


def weight_name(weight) -> str:
    return weight.name.split("/")[-1].split(":")[0]


def m_by_n_violations(values: np.ndarray, m: int, n: int) -> int:
    """Groups of n consecutive weights along the input-channel axis (a kernel's second-to-last)
    holding more than n - m non-zeros."""
    along_inputs = np.moveaxis(values, -2, -1)
    groups = along_inputs.reshape(-1, n)  # the plan refuses input channels that are not a multiple of n
    return int(np.sum(np.count_nonzero(groups, axis=1) > n - m))


def block_zeros(values: np.ndarray, block: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Zeros in each block of a 2-D kernel (squeezed as TFMOT does), and each block's size (edge
    blocks are smaller)."""
    matrix = np.squeeze(values)
    starts = [np.arange(0, dim, size) for dim, size in zip(matrix.shape, block)]
    zeros = np.add.reduceat(np.add.reduceat((matrix == 0).astype(int), starts[0], axis=0), starts[1], axis=1)
    sizes = np.outer(*(np.diff(np.append(s, dim)) for s, dim in zip(starts, matrix.shape)))
    return zeros, sizes


def measure_tensor(layer: str, weight: str, values: np.ndarray, target: float, tolerance: float, plan: LayerPlan) -> TensorSparsity:
    """One pruned tensor: its zeros against the target, and its structure when one was asked for.

    Unstructured and m_by_n pruning are counted in weights; block pruning in blocks, since TFMOT
    ranks and zeroes whole blocks and edge blocks are smaller.
    """
    zeros = int(values.size - np.count_nonzero(values))
    violations = blocks_zero = None
    units, zero_units = values.size, zeros
    if plan.m_by_n is not None:
        violations = m_by_n_violations(values, *plan.m_by_n)
    elif plan.block_size is not None:
        zeros_per_block, whole = block_zeros(values, plan.block_size)
        violations = int(np.sum((zeros_per_block > 0) & (zeros_per_block < whole)))
        units, zero_units = zeros_per_block.size, int(np.sum(zeros_per_block == whole))
        blocks_zero = zero_units / units
    reached = abs(zero_units - tfmot_zeros(units, target)) <= tolerance * units
    return TensorSparsity(
        layer=layer, weight=weight, size=int(values.size), zeros=zeros, sparsity=zeros / values.size,
        passed=reached and not violations, shape=list(values.shape), target=target, structure_violations=violations,
        blocks_zero=blocks_zero,
    )
