"""What check_inputs reads once per run, for every stage's pre-flight check to share."""

from __future__ import annotations

import functools

import pandas as pd

from pruneflow.tasks.libs import keras3
from pruneflow.tasks.libs.dataset import csv_paths_of, encode_labels, read_splits
from pruneflow.tasks.libs.models import load_model
from pruneflow.tasks.libs.schedule import resolve_schedule
from pruneflow.tasks.libs.selection import LayerPlan
from pruneflow.tasks.specs.config import RunConfig, Schedule


class Readings:
    """What check_inputs reads, once per run, for every stage's check to share.

    Each reading happens on first use; its user errors (a bad CSV, a model that cannot be
    loaded, a schedule that would not prune) surface from the check that first needs it.
    """

    def __init__(self, config: RunConfig):
        self.config = config

    @functools.cached_property
    def frames(self) -> dict[str, pd.DataFrame]:
        """The three splits' rows, checked for structure and leaks (see pruneflow.tasks.libs.dataset.read_splits)."""
        return read_splits(self.config.dataset)

    @functools.cached_property
    def classes(self) -> list[str]:
        return encode_labels(self.frames, csv_paths_of(self.config.dataset))

    @functools.cached_property
    def baseline_model(self):
        """The baseline, loaded once; refused if loading it would run code, unless trusted. A baseline
        that Keras 3 wrote is translated into tf_keras (what translate_baseline will store), so a
        layer that cannot be rebuilt is refused here, before any stage."""
        from pruneflow.tasks.core.runtime import keras

        keras.backend.clear_session()
        path = self.config.model.baseline
        if path.is_file() and keras3.written_by_keras3(path):
            return keras3.translate(keras3.load_keras3(path), path)
        return load_model(path, trusted=self.config.model.trust_custom_code)

    @functools.cached_property
    def schedule(self) -> Schedule:
        """The pruning schedule with end_step filled in; refused if it would not prune."""
        steps = self.config.training_spec.steps_per_epoch(len(self.frames["train"]))
        return resolve_schedule(self.config.pruning, steps, self.config.training.epochs)


    @functools.cached_property
    def plan(self) -> LayerPlan:
        """The baseline's layer plan (pruneflow.tasks.libs.selection); refused if the layer selection does not fit."""
        from pruneflow.tasks.libs.selection import plan_for

        config = self.config
        return plan_for(self.baseline_model, self.schedule, config.training_spec, config.model.baseline)
