"""The stage graph and the formats as the tests read them: stage sets and file lists derived from
pruneflow.flows.stages and the formats registry, never written out by hand."""

from __future__ import annotations

from pruneflow.flows.stages import CHANNELS_ONLY, KERAS3_ONLY
from pruneflow.flows.stages import STAGES as EVERY_STAGE
from pruneflow.tasks.specs.formats import FORMATS, KERAS

# The stages' names in order: each stores an artifact and is cached. publish_report follows them.
# STAGES: those of a run whose baseline tf_keras wrote, without channel pruning (every test's, but
# the Keras 3 and channel ones'); KERAS3_STAGES: those of a run whose baseline Keras 3 wrote;
# CHANNEL_STAGES: those of a run with a channel_pruning section.
PIPELINE = [stage for stage in EVERY_STAGE if stage not in KERAS3_ONLY + CHANNELS_ONLY]
STAGES = [stage.name for stage in PIPELINE]
KERAS3_STAGES = [stage.name for stage in EVERY_STAGE if stage not in CHANNELS_ONLY]
CHANNEL_STAGES = [stage.name for stage in EVERY_STAGE if stage not in KERAS3_ONLY]

# What flows.graph.prepare runs once per run (a sweep's included), and what prune_to runs per target.
PREPARED = STAGES[: STAGES.index("prune_train")]

PER_TARGET = STAGES[STAGES.index("prune_train") :]


def takes(*inputs: str) -> set[str]:
    """The stages whose build function takes one of these inputs (by its parameter's name)."""
    return {stage.name for stage in PIPELINE if set(stage.inputs) & set(inputs)}


def deployable_files(formats) -> set[tuple[str, str]]:
    """(model, format) of every file a run that exports `formats` can deploy: each model's Keras
    .h5, the pruned model's file in each format, the baseline's in each dense counterpart."""
    return {("baseline", KERAS), ("pruned", KERAS)} | {("pruned", fmt) for fmt in formats} | {
        ("baseline", FORMATS[fmt].dense) for fmt in formats
    }
