"""Which layers a run prunes, to what sparsity and in what structure: the plan that prune-training
wraps by, and that the sanity check measures against.

Every layer of the model, nested models walked in place, falls in one of three groups: pruned
(TFMOT has a rule for it and the config selects it), left dense by choice (layers.include,
exclude, keep_first_conv, keep_classifier, or the pruning policy), or left dense because TFMOT
cannot prune it (no rule, as for Rescaling, Normalization or TF-op layers; or a rule that
prunes none of its weights, as for DepthwiseConv2D and BatchNormalization). Layers without
weights that TFMOT knows (pooling, activations, Flatten) are in none.
"""

from __future__ import annotations

from fnmatch import fnmatchcase
from glob import escape
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Literal

from pydantic import BaseModel, ConfigDict

from pruneflow.tasks.core.errors import PruneflowError
from pruneflow.tasks.libs.models import (
    require_graph_model,
)
from pruneflow.tasks.specs.config import LayerSelection, Schedule, TrainingSpec

if TYPE_CHECKING:
    pass


Group = Literal["pruned", "dense_by_choice", "cannot_prune"]
GROUP_TITLES: dict[str, str] = {
    "pruned": "pruned",
    "dense_by_choice": "left dense by choice",
    "cannot_prune": "left dense: TFMOT cannot prune it",
}


class PlannedLayer(BaseModel):
    """One layer's place in the plan."""

    model_config = ConfigDict(frozen=True)

    path: str  # nested models' names first: backbone/conv1
    kind: str  # the layer's class name
    group: Group
    target: float | None = None  # pruned layers only
    reason: str = ""  # why a layer is left dense


class LayerPlan(BaseModel):
    """The plan for every layer, in the model's order."""

    model_config = ConfigDict(frozen=True)

    layers: list[PlannedLayer]
    m_by_n: tuple[int, int] | None = None
    block_size: tuple[int, int] | None = None

    @property
    def pruned(self) -> dict[str, PlannedLayer]:
        return {layer.path: layer for layer in self.layers if layer.group == "pruned"}

    def of(self, path: str) -> PlannedLayer | None:
        return next((layer for layer in self.layers if layer.path == path), None)


def walk(model, prefix: str = "", seen: set[int] | None = None) -> Iterator[tuple[str, object]]:
    """(path, layer) for every layer, nested Sequential and functional models walked in place; a
    layer or model used in several places, once, at its first place.

    Raises:
        PruneflowError: a nested subclassed model, whose layers cannot be cloned.
    """
    from pruneflow.tasks.core.runtime import keras

    seen = set() if seen is None else seen
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer) or id(layer) in seen:
            continue  # clone_model makes new inputs; a shared layer is one layer
        seen.add(id(layer))
        if isinstance(layer, keras.Model):
            if not (isinstance(layer, keras.Sequential) or layer._is_graph_network):
                raise PruneflowError(
                    f"nested model {prefix}{layer.name} is subclassed ({type(layer).__name__}): TFMOT prunes "
                    "Sequential and functional models only. Rebuild it with the functional API."
                )
            yield from walk(layer, f"{prefix}{layer.name}/", seen)
        else:
            yield prefix + layer.name, layer


def prunable_weights(layer) -> list | None:
    """The weights TFMOT prunes in `layer`: None when it has no rule for the layer, [] when its
    rule prunes none of them (DepthwiseConv2D, BatchNormalization)."""
    from tensorflow_model_optimization.python.core.sparsity.keras.prune_registry import PruneRegistry

    from pruneflow.tasks.core.runtime import tfmot

    if isinstance(layer, tfmot.sparsity.keras.PrunableLayer) or hasattr(layer, "get_prunable_weights"):
        return list(layer.get_prunable_weights())
    if PruneRegistry.supports(layer):
        return list(PruneRegistry.make_prunable(layer).get_prunable_weights())
    return None


def matches(pattern: str, path: str, layer) -> bool:
    """Whether a layers.* pattern names this layer: by path, name or class name."""
    return any(fnmatchcase(candidate, pattern) for candidate in (path, layer.name, type(layer).__name__))


def _first_conv(entries) -> str | None:
    return next((path for path, layer, weights in entries if weights and "Conv" in type(layer).__name__), None)


def _classifier(entries) -> str | None:
    return next((path for path, layer, weights in reversed(entries) if weights and type(layer).__name__ == "Dense"), None)


def plan_layers(
    model, selection: LayerSelection, target: float, model_path: Path, policy=None, policy_name: str = ""
) -> LayerPlan:
    """Sort every layer into pruned (with its target sparsity), left dense by choice, and left dense
    because TFMOT cannot prune it.

    Args:
        target: the schedule's final sparsity, for pruned layers without a per-layer override.
        policy: a TFMOT PruningPolicy whose allow_pruning also selects layers (None: all).

    Raises:
        PruneflowError: a pattern that selects nothing, a pruned layer that cannot take the
            structure, or nothing left to prune; each named.
    """
    entries = [(path, layer, prunable_weights(layer)) for path, layer in walk(model)]
    keep = {
        _first_conv(entries): "layers.keep_first_conv" if selection.keep_first_conv else None,
        _classifier(entries): "layers.keep_classifier" if selection.keep_classifier else None,
    }
    planned = []
    for path, layer, weights in entries:
        kind = type(layer).__name__
        if weights is None:
            planned.append(PlannedLayer(path=path, kind=kind, group="cannot_prune", reason=f"TFMOT has no pruning rule for {kind}"))
            continue
        if not weights:
            if layer.weights:
                planned.append(PlannedLayer(path=path, kind=kind, group="cannot_prune", reason=f"TFMOT prunes no weight of {kind}"))
            continue
        reason = dense_by_choice(path, layer, selection, keep.get(path), policy, policy_name)
        if reason:
            planned.append(PlannedLayer(path=path, kind=kind, group="dense_by_choice", reason=reason))
            continue
        override = per_layer_sparsity(selection, path, layer)
        planned.append(PlannedLayer(path=path, kind=kind, group="pruned", target=target if override is None else override))
    plan = LayerPlan(layers=planned, m_by_n=selection.m_by_n, block_size=selection.block_size)
    _require_patterns_matched(entries, plan, selection, model_path)
    _require_structure_fits(entries, plan, model_path)
    if not plan.pruned:
        raise PruneflowError(
            f"{model_path}: no layer is left to prune: {_group_summary(plan)}. Widen layers.include or narrow layers.exclude."
        )
    return plan


def per_layer_sparsity(selection: LayerSelection, path: str, layer) -> float | None:
    """The layer's own target in layers.sparsity: its exact path first (a proposal names every
    layer so, and a top-level 'dense' must not give its sparsity to a nested 'head/dense'),
    then the first pattern that matches it."""
    for key in (path, escape(path)):
        if key in selection.sparsity:
            return selection.sparsity[key]
    return next((s for pattern, s in selection.sparsity.items() if matches(pattern, path, layer)), None)


def dense_by_choice(path, layer, selection: LayerSelection, kept_by: str | None, policy, policy_name: str) -> str:
    """Why the config leaves this prunable layer dense ('' when it does not)."""
    if selection.include and not any(matches(p, path, layer) for p in selection.include):
        return "matches no layers.include pattern"
    excluded_by = next((p for p in selection.exclude if matches(p, path, layer)), None)
    if excluded_by is not None:
        return f"layers.exclude {excluded_by!r}"
    if kept_by:
        return kept_by
    if policy is not None and not policy.allow_pruning(layer):
        return f"training.pruning_policy {policy_name}"
    return ""


def _require_patterns_matched(entries, plan: LayerPlan, selection: LayerSelection, model_path: Path) -> None:
    """Refuse, naming them, patterns that select nothing: a typo would otherwise prune everything."""
    prunable = [(path, layer) for path, layer, weights in entries if weights]
    pruned = [(path, layer) for path, layer, _ in entries if path in plan.pruned]
    every = [(path, layer) for path, layer, _ in entries]
    unmatched = [
        f"layers.include {p!r} (no layer TFMOT can prune)" for p in selection.include
        if not any(matches(p, path, layer) for path, layer in prunable)
    ] + [
        f"layers.exclude {p!r} (no layer)" for p in selection.exclude
        if not any(matches(p, path, layer) for path, layer in every)
    ] + [
        f"layers.sparsity {p!r} (no pruned layer)" for p in selection.sparsity
        if not any(matches(p, path, layer) for path, layer in pruned)
    ]
    if unmatched:
        names = ", ".join(path for path, _ in prunable)
        raise PruneflowError(
            f"{model_path}: these patterns match nothing: {'; '.join(unmatched)}. A pattern matches a layer's path "
            f"(nested models' names first), name or class name. The layers TFMOT can prune: {names}."
        )


def _require_structure_fits(entries, plan: LayerPlan, model_path: Path) -> None:
    """Refuse, naming them, pruned layers that cannot take the structure asked for."""
    if plan.m_by_n is None and plan.block_size is None:
        return
    misfits = []
    for path, layer, weights in entries:
        if path not in plan.pruned:
            continue
        for weight in weights:
            shape = tuple(weight.shape)
            if plan.m_by_n is not None:
                if len(shape) not in (2, 4):
                    misfits.append(f"{path} ({type(layer).__name__}, kernel {list(shape)}: TFMOT's m_by_n takes Dense and Conv2D kernels only)")
                elif shape[-2] % plan.m_by_n[1]:
                    misfits.append(f"{path} ({type(layer).__name__}, kernel {list(shape)})")
            elif len(shape) != 2 or any(dim <= size for dim, size in zip(shape, plan.block_size)):
                misfits.append(f"{path} ({type(layer).__name__}, kernel {list(shape)})")
    if misfits:
        if plan.m_by_n is not None:
            why = (
                f"layers.m_by_n {list(plan.m_by_n)} applies along the input channels (the kernel's second-to-last "
                f"dimension), which must be a multiple of {plan.m_by_n[1]} for the layer to reach {plan.m_by_n[0]} "
                f"zeros in every {plan.m_by_n[1]}"
            )
        else:
            why = (
                f"layers.block_size {list(plan.block_size)} applies to 2-D kernels (Dense layers) with more rows and "
                "columns than a block (TFMOT fails on convolution kernels and on a kernel one block wide)"
            )
        raise PruneflowError(
            f"{model_path}: {why}; these layers cannot take it: {', '.join(misfits)}. Leave them dense with "
            "layers.exclude (or layers.keep_first_conv for the first convolution)."
        )


def _group_summary(plan: LayerPlan) -> str:
    counts = {group: sum(layer.group == group for layer in plan.layers) for group in GROUP_TITLES}
    return ", ".join(f"{n} {GROUP_TITLES[group]}" for group, n in counts.items())


def plan_table(plan: LayerPlan) -> str:
    """One line per layer: path, class, group, target or reason."""
    lines = [f"{'layer':<48} {'class':<22} {'plan'}"]
    for layer in plan.layers:
        what = f"pruned to {layer.target:g}" if layer.group == "pruned" else f"dense: {layer.reason}"
        lines.append(f"{layer.path:<48} {layer.kind:<22} {what}")
    return "\n".join(lines)


def pruning_policy(name: str):
    """TFMOT's PruningPolicy for TrainingConfig.pruning_policy (None: prune every supported layer)."""
    from pruneflow.tasks.core.runtime import tfmot

    return tfmot.sparsity.keras.PruneForLatencyOnXNNPack() if name == "xnnpack_latency" else None


def require_policy_fits(model, policy: str, model_path: Path) -> None:
    """Refuse, with TFMOT's reason, a model the pruning policy does not apply to."""
    chosen = pruning_policy(policy)
    if chosen is None:
        return
    try:
        chosen.ensure_model_supports_pruning(model)
    except ValueError as reason:
        raise PruneflowError(
            f"{model_path}: training.pruning_policy {policy} does not fit this model: TFMOT says: {reason}. "
            "It needs a MobileNet-like model: a ZeroPadding2D((1, 1)) then a 3x3 stride-2 'valid' Conv2D on 3 "
            "channels first, 1x1 convolutions and 3x3 depthwise convolutions in between, a "
            "GlobalAveragePooling2D(keepdims=True) last. Use pruning_policy all_layers for other models."
        ) from None


def plan_for(model, schedule: Schedule, training: TrainingSpec, model_path: Path) -> LayerPlan:
    """The layer plan of a run: the config's selection, the schedule's target, the pruning policy."""
    require_graph_model(model, model_path)
    require_policy_fits(model, training.pruning_policy, model_path)
    return plan_layers(
        model, training.layers, schedule.final_sparsity, model_path,
        policy=pruning_policy(training.pruning_policy), policy_name=training.pruning_policy,
    )
