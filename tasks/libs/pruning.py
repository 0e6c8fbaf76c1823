"""Pruning wrappers: the planned layers of a model wrapped with TFMOT's prune_low_magnitude,
and what a reloaded checkpoint of a wrapped model needs back (its m_by_n structure, its step)."""

from __future__ import annotations

from pathlib import Path

from pruneflow.tasks.core.errors import PruneflowError
from pruneflow.tasks.libs.schedule import at_target, to_tfmot
from pruneflow.tasks.libs.selection import LayerPlan
from pruneflow.tasks.specs.config import Schedule


def wrap_for_pruning(model, plan: LayerPlan, schedule: Schedule, model_path: Path):
    """The model with a pruning wrapper on each planned layer, every other layer as it was.

    clone_model with a clone function, nested models cloned the same way, is how TFMOT's own
    prune_low_magnitude wraps a whole model; doing it here lets layers TFMOT has no rule for
    (Rescaling, Normalization, TF-op layers) stay in the model unwrapped. Every layer of the
    clone, wrapped or not, is the baseline's own layer object, so training the clone changes
    `model`'s weights: load the baseline afresh for anything else. A layer used in several
    places is cloned once and shared again, as `walk` plans it once.
    """
    from pruneflow.tasks.core.runtime import keras, tfmot

    made: dict[int, object] = {}

    def clone_with(prefix: str):
        def clone(layer):
            if id(layer) not in made:
                made[id(layer)] = clone_once(prefix, layer)
            return made[id(layer)]
        return clone

    def clone_once(prefix: str, layer):
        if isinstance(layer, keras.Model):
            return keras.models.clone_model(layer, clone_function=clone_with(f"{prefix}{layer.name}/"))
        planned = plan.pruned.get(prefix + layer.name)
        if planned is None:
            return layer
        return tfmot.sparsity.keras.prune_low_magnitude(layer, **pruning_params(plan, at_target(schedule, planned.target)))

    try:
        return keras.models.clone_model(model, clone_function=clone_with(""))
    except (ValueError, NotImplementedError) as error:
        raise PruneflowError(f"{model_path}: TFMOT cannot prune this model: {error}") from None


def pruning_params(plan: LayerPlan, schedule: Schedule) -> dict:
    """prune_low_magnitude's arguments for one layer."""
    params = {"pruning_schedule": to_tfmot(schedule)}
    if plan.m_by_n is not None:
        params["sparsity_m_by_n"] = plan.m_by_n
    if plan.block_size is not None:
        params["block_size"] = plan.block_size
    return params


def restore_structure(wrapped, m_by_n: tuple[int, int] | None) -> None:
    """Give the wrappers of a model loaded from .h5 their m_by_n structure back.

    TFMOT's PruneLowMagnitude.get_config leaves sparsity_m_by_n out, so a checkpoint reloads as
    unstructured pruning (shared/STACK.md); a resumed run would then prune the rest of its steps
    without the structure. Setting it before fit traces the structured mask update.
    """
    from pruneflow.tasks.core.runtime import PruneLowMagnitude

    if m_by_n is None:
        return
    for wrapper in wrapped.submodules:
        if isinstance(wrapper, PruneLowMagnitude):
            wrapper.sparsity_m_by_n = m_by_n
            wrapper.pruning_obj._sparsity_m_by_n = m_by_n


def pruning_step(wrapped) -> int:
    """Training steps the wrapped model has taken (TFMOT's counter; -1 before the first)."""
    from pruneflow.tasks.core.runtime import PruneLowMagnitude

    wrapper = next(layer for layer in wrapped.submodules if isinstance(layer, PruneLowMagnitude))
    return int(wrapper.pruning_step.numpy())
