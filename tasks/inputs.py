"""check_inputs: every cheap check of a run's inputs, before any stage does expensive work.

It confines the config's paths (tasks.confine), reads the CSVs and loads the baseline once,
lets each stage check what it will need (Stage.check), and passes on what it read: the
dataset listing with each image's content digest, the baseline's digest, the resolved
schedule and the layer plan. A run started from a deployment may set model.trust_custom_code
only where the worker allows it with PRUNEFLOW_ALLOW_CUSTOM_CODE=1: loading such a model runs
its code.
"""

from __future__ import annotations

import functools
import os

import pandas as pd
from prefect import task
from prefect.cache_policies import NONE
from pydantic import BaseModel, ConfigDict

from tasks.config import RunConfig, Schedule
from tasks.confine import Roots, confine_config, confine_images
from tasks.dataset import DatasetListing, csv_paths_of, encode_labels, list_images, read_splits
from tasks.errors import PruneflowError
from tasks.files import DigestCache, storage_errors
from tasks.layout import OutputLayout
from tasks.models import ModelFile, load_model
from tasks.pipeline import STAGES
from tasks.schedule import resolve_schedule
from tasks.selection import LayerPlan

ALLOW_CODE_ENV = "PRUNEFLOW_ALLOW_CUSTOM_CODE"


class Preflight:
    """What check_inputs reads, once per run, for every stage's check to share.

    Each reading happens on first use; its user errors (a bad CSV, a model that cannot be
    loaded, a schedule that would not prune) surface from the check that first needs it.
    """

    def __init__(self, config: RunConfig):
        self.config = config

    @functools.cached_property
    def frames(self) -> dict[str, pd.DataFrame]:
        """The three splits' rows, checked for structure and leaks (see tasks.dataset.read_splits)."""
        return read_splits(self.config.dataset)

    @functools.cached_property
    def classes(self) -> list[str]:
        return encode_labels(self.frames, csv_paths_of(self.config.dataset))

    @functools.cached_property
    def baseline_model(self):
        """The baseline, loaded once; refused if loading it would run code, unless trusted."""
        from tasks.runtime import keras

        keras.backend.clear_session()
        return load_model(self.config.model.baseline, trusted=self.config.model.trust_custom_code)

    @functools.cached_property
    def schedule(self) -> Schedule:
        """The pruning schedule with end_step filled in; refused if it would not prune."""
        steps = self.config.training_spec.steps_per_epoch(len(self.frames["train"]))
        return resolve_schedule(self.config.pruning, steps, self.config.training.epochs)


    @functools.cached_property
    def plan(self) -> LayerPlan:
        """The baseline's layer plan (tasks.selection); refused if the layer selection does not fit."""
        from tasks.prune import plan_for

        config = self.config
        return plan_for(self.baseline_model, self.schedule, config.training_spec, config.model.baseline)


class RunInputs(BaseModel):
    """What check_inputs read and passes on to the stages."""

    model_config = ConfigDict(frozen=True)

    listing: DatasetListing
    baseline: ModelFile
    schedule: Schedule
    plan: LayerPlan


def check_run_inputs(config: RunConfig, roots: Roots) -> RunInputs:
    """Check everything a run reads, cheaply, before any stage does expensive work.

    Raises:
        PruneflowError: a path outside the roots (the config's, or an image's in a CSV); any
            stage's check failing (see each stage's module); an output folder that cannot be
            written.
    """
    confine_config(config, roots)
    preflight = Preflight(config)
    csv_paths = csv_paths_of(config.dataset)
    confine_images(preflight.frames, csv_paths, roots)  # before any image or model is read
    for stage in STAGES:
        stage.code  # noqa: B018 (read as the run starts: an edit during the run must not change its keys)
        if stage.check is not None:
            stage.check(preflight)
    layout = OutputLayout(root=config.output_root)
    check_writable(layout.root)
    with DigestCache(layout.digest_cache) as cache:
        listing = list_images(preflight.frames, preflight.classes, csv_paths, cache.digest)
    baseline = ModelFile.of(config.model.baseline, trust_code=config.model.trust_custom_code)
    return RunInputs(listing=listing, baseline=baseline, schedule=preflight.schedule, plan=preflight.plan)


def check_writable(output_root) -> None:
    """Refuse an output folder that cannot be created or written (a probe file, removed at once)."""
    with storage_errors(output_root, "into output_root"):
        output_root.mkdir(parents=True, exist_ok=True)
        probe = output_root / f".write-probe-{os.getpid()}"
        probe.write_bytes(b"ok")
        probe.unlink()


@task(cache_policy=NONE)
def check_inputs(config: RunConfig, from_deployment: bool) -> RunInputs:
    """Refuse bad or out-of-bounds inputs before any stage runs; pass on what was read.

    Args:
        from_deployment: the run was started from a deployment (a schedule, or the UI's form):
            its paths must then be confined, so every root must be set.
    """
    roots = Roots.from_env()
    if from_deployment:
        why = "this run was started from a deployment, whose parameters anyone with UI access can set"
        roots.require_all(why)
        if config.model.trust_custom_code and os.environ.get(ALLOW_CODE_ENV) != "1":
            raise PruneflowError(
                f"model.trust_custom_code: true is refused: {why}, and loading such a model runs its code on "
                f"the worker. Run it with `pruneflow run` instead, or have the worker's operator set {ALLOW_CODE_ENV}=1."
            )
    return check_run_inputs(config, roots)
