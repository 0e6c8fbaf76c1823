"""The sanity_check stage: every pruned weight tensor of the stripped model reached its target
sparsity, in the structure asked for; every other tensor is listed with why it stayed dense."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tasks.config import Schedule, TrainingSpec
from tasks.errors import PruneflowError
from tasks.files import write_json
from tasks.log import run_logger
from tasks.models import load_model
from tasks.prune import StrippedModel, plan_for
from tasks.selection import LayerPlan, prunable_weights, walk
from tasks.sparsity import DenseTensor, SanityReport, TensorSparsity, tfmot_zeros
from tasks.stage import Stage


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


def measure_sparsity(model, plan: LayerPlan, expected: float, tolerance: float, folder: Path = Path(".")) -> SanityReport:
    """Measure every weight tensor of `model` (the stripped model, the one that ships) against the plan."""
    tensors, dense = [], []
    for path, layer in walk(model):
        planned = plan.of(path)
        if planned is None:  # a layer whose weights TFMOT knows and does not prune: none (pooling, activations)
            continue
        pruned = {id(w) for w in (prunable_weights(layer) or [])}
        for weight in layer.weights:
            values = weight.numpy()
            if planned.group == "pruned" and id(weight) in pruned:
                tensors.append(measure_tensor(path, weight_name(weight), values, planned.target, tolerance, plan))
                continue
            group, reason = planned.group, planned.reason
            if planned.group != "cannot_prune" and id(weight) not in pruned:  # a bias, a BatchNorm's statistics
                group, reason = "cannot_prune", f"TFMOT prunes only {_names(layer)} of {planned.kind}"
            dense.append(DenseTensor(
                layer=path, weight=weight_name(weight), size=int(values.size),
                zeros=int(values.size - np.count_nonzero(values)), group=group, reason=reason,
            ))
    return SanityReport(
        folder=folder, expected=expected, tolerance=tolerance, tensors=tensors, dense=dense, structure=describe_structure(plan),
        layers=plan.layers,
    )


def _names(layer) -> str:
    return ", ".join(weight_name(w) for w in prunable_weights(layer) or []) or "nothing"


def describe_structure(plan: LayerPlan) -> str:
    if plan.m_by_n is not None:
        return f"{plan.m_by_n[0]}:{plan.m_by_n[1]} (m_by_n)"
    if plan.block_size is not None:
        return f"block {plan.block_size[0]}x{plan.block_size[1]}"
    return ""


def require_target_reached(report: SanityReport, model_path: Path) -> None:
    """Raise, naming every tensor that missed its target or its structure."""
    if not report.tensors:
        raise PruneflowError(f"{model_path}: the model has no pruned weight tensor")
    if report.failed:
        missed = ", ".join(
            f"{t.layer} {t.weight} at {t.measured:.4f}{' of blocks' if t.blocks_zero is not None else ''} (target {t.target:g}"
            + (f", {t.structure_violations} groups break {report.structure}" if t.structure_violations else "")
            + ")"
            for t in report.failed
        )
        never_pruned = any(t.zeros == 0 for t in report.failed)
        raise PruneflowError(
            f"sanity check: {len(report.failed)} of {len(report.tensors)} pruned tensors of {model_path} missed their "
            f"target sparsity (tolerance {report.tolerance}){' or structure' if report.structure else ''}: {missed}."
            + (" A nested base model called with training=False is never pruned: call it without training=False."
               if never_pruned else "")
        )


def check_sparsity(
    out: Path, stripped: StrippedModel, schedule: Schedule, training: TrainingSpec, tolerance: float
) -> SanityReport:
    """Fail, naming the tensors, unless every pruned tensor is within tolerance of its target.

    The per-tensor and per-group tables are logged either way, and the report stored as
    sanity.json when the check passes.
    """
    from tasks.runtime import keras

    keras.backend.clear_session()
    model = load_model(stripped.model)
    plan = plan_for(model, schedule, training, stripped.model)
    report = measure_sparsity(model, plan, schedule.final_sparsity, tolerance, out)
    logger = run_logger()
    logger.info("Sparsity per pruned tensor%s:\n%s", f" ({report.structure})" if report.structure else "", report.table())
    logger.info("Layers: %s", report.layer_counts())
    logger.info("Weights by group:\n%s", report.group_table())
    if report.dense:
        logger.info("Tensors left dense:\n%s", report.dense_table())
    require_target_reached(report, stripped.model)
    write_json(out / "sanity.json", report.model_dump(mode="json", exclude={"folder", "digest"}))
    return report


def describe_sanity(report: SanityReport) -> str:
    shares = report.shares()
    return (
        f"all {len(report.tensors)} pruned tensors within {report.tolerance} of their target"
        f"{' in ' + report.structure if report.structure else ''}; pruned tensors hold {shares['pruned']:.1%} of the "
        f"weights, {shares['dense_by_choice']:.1%} left dense by choice, {shares['cannot_prune']:.1%} TFMOT cannot prune"
    )


sanity_check = Stage("sanity_check", check_sparsity, describe=describe_sanity)
