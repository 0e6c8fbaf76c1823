"""The prune_channels stage: whole output channels removed from the baseline's convolutions and
Dense layers (pruneflow.tasks.libs.channels), the model rebuilt narrower with the kept weights.
prune_train then fine-tunes the narrowed model under the pruning schedule. The flow runs it only
when the config has a channel_pruning section."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from pruneflow.tasks.core.errors import PruneflowError
from pruneflow.tasks.core.stage import Stage
from pruneflow.tasks.libs.artifacts import NarrowedModel
from pruneflow.tasks.libs.channels import ChannelPlan, Tracing, layer_costs, plan_channels, rebuild, trace_channels
from pruneflow.tasks.libs.models import ModelFile, save_model
from pruneflow.tasks.specs.config import ChannelSpec

if TYPE_CHECKING:
    from pruneflow.tasks.libs.readings import Readings


def channel_plan(model, channels: ChannelSpec, model_path: Path) -> tuple[Tracing, ChannelPlan]:
    """The model's channel tracing and plan; refused, with each group's reason, if nothing is removed."""
    tracing = trace_channels(model)
    plan = plan_channels(
        model, tracing, fraction=channels.fraction, criterion=channels.criterion, overrides=channels.layers,
        selection=channels.selection, model_path=model_path, multiple=channels.multiple,
        round_to=channels.round_to,
    )
    if not plan.pruned:
        reasons = "; ".join(f"{', '.join(g.layers)}: {g.reason}" for g in plan.whole)
        raise PruneflowError(
            f"{model_path}: channel_pruning removes no channel: {reasons}. Raise channel_pruning.fraction, or widen "
            "layers.include and narrow layers.exclude."
        )
    return tracing, plan


def narrow(out: Path, baseline: ModelFile, channels: ChannelSpec) -> NarrowedModel:
    """Rebuild the baseline without its weakest channels; save it as narrowed.h5."""
    from pruneflow.tasks.core.runtime import keras

    keras.backend.clear_session()
    model = baseline.load()
    tracing, plan = channel_plan(model, channels, baseline.path)
    narrowed = rebuild(model, tracing, plan)
    save_model(narrowed, out / "narrowed.h5")
    return NarrowedModel(folder=out, plan=plan, before=layer_costs(model), after=layer_costs(narrowed))


def check_channels(readings: Readings) -> None:
    """The channel_pruning section fits the baseline at its fraction, at each of
    sweep.channel_fractions and at the highest a search may take: its patterns match, and each
    removes something."""
    config = readings.config
    fractions = [config.channel_pruning.fraction] if config.channel_pruning else []
    search = config.sweep.search
    if search is not None and search.channel_fraction is not None:
        fractions.append(search.channel_fraction[1])
    for fraction in dict.fromkeys(f for f in [*fractions, *config.sweep.channel_fractions] if f):
        channel_plan(readings.baseline_model, config.with_channels(fraction).channel_spec, config.model.baseline)


prune_channels = Stage(
    "prune_channels", narrow, check=check_channels,
    describe=lambda made: (
        f"{sum(g.removed for g in made.plan.pruned)} channels removed in {len(made.plan.pruned)} groups "
        f"({len(made.plan.whole)} left whole): {made.params_ratio:.2f}x the parameters, "
        f"{made.flops_ratio:.2f}x the FLOPs"
    ),
)
