"""The sanity_check stage: every pruned weight tensor of the stripped model reached its target
sparsity, in the structure asked for; every other tensor is listed with why it stayed dense."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pruneflow.tasks.core.errors import PruneflowError
from pruneflow.tasks.core.files import write_json
from pruneflow.tasks.core.log import run_logger
from pruneflow.tasks.core.stage import Stage
from pruneflow.tasks.libs.artifacts import SanityReport, StrippedModel
from pruneflow.tasks.libs.models import load_model
from pruneflow.tasks.libs.selection import LayerPlan, plan_for, prunable_weights, walk
from pruneflow.tasks.libs.sparsity import DenseTensor, measure_tensor, weight_name
from pruneflow.tasks.specs.config import Schedule, TrainingSpec


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
    from pruneflow.tasks.core.runtime import keras

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


sanity_check = Stage("sanity_check", check_sparsity, describe=describe_sanity)
