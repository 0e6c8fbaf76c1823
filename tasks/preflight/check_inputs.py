"""check_inputs: every cheap check of a run's inputs, before any stage does expensive work.

It confines the config's paths (pruneflow.tasks.preflight.confine), reads the CSVs and loads the baseline once,
lets each stage check what it will need (Stage.check), and passes on what it read: the
dataset listing with each image's content digest, the baseline's digest, the resolved
schedule and the layer plan. What the stage checks concluded is kept in the output root,
named by the digest of everything they read (the config, the CSVs, the baseline, their code):
a run of the same inputs reuses it rather than loading the baseline again, so that a run whose
every stage is stored does not import TensorFlow. A run started from a deployment may set
model.trust_custom_code only where the worker allows it with PRUNEFLOW_ALLOW_CUSTOM_CODE=1:
loading such a model runs its code.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from prefect import task
from prefect.cache_policies import NONE
from pydantic import BaseModel, ConfigDict

from pruneflow.tasks.core.errors import PruneflowError
from pruneflow.tasks.core.files import DigestCache, file_digest, storage_errors, write_json
from pruneflow.tasks.core.layout import OutputLayout
from pruneflow.tasks.core.stage import Stage, code_version
from pruneflow.tasks.core.store import digest_of
from pruneflow.tasks.libs import keras3
from pruneflow.tasks.libs.dataset import DatasetListing, csv_paths_of, list_images
from pruneflow.tasks.libs.models import ModelFile
from pruneflow.tasks.libs.readings import Readings
from pruneflow.tasks.libs.selection import LayerPlan
from pruneflow.tasks.preflight.confine import Roots, confine_config, confine_images
from pruneflow.tasks.specs.config import RunConfig, Schedule

ALLOW_CODE_ENV = "PRUNEFLOW_ALLOW_CUSTOM_CODE"


class RunInputs(BaseModel):
    """What check_inputs read and passes on to the stages."""

    model_config = ConfigDict(frozen=True)

    listing: DatasetListing
    baseline: ModelFile
    baseline_keras3: bool  # Keras 3 wrote it: translate_baseline rebuilds it in tf_keras, a Keras 3 file is handed back
    schedule: Schedule
    plan: LayerPlan


def check_run_inputs(config: RunConfig, roots: Roots, stages: Sequence[Stage]) -> RunInputs:
    """Check everything a run reads, cheaply, before any stage does expensive work.

    Raises:
        PruneflowError: a path outside the roots (the config's, or an image's in a CSV); any
            stage's check failing (see each stage's module); an output folder that cannot be
            written.
    """
    confine_config(config, roots)
    readings = Readings(config)
    csv_paths = csv_paths_of(config.dataset)
    confine_images(readings.frames, csv_paths, roots)  # before any image or model is read
    layout = OutputLayout(root=config.output_root)
    record = checked_record(config, csv_paths, layout, stages)
    checked = read_checked(record)
    if checked is None:
        for stage in stages:
            if stage.check is not None:
                stage.check(readings)
    check_writable(layout.root)
    with DigestCache(layout.digest_cache) as cache:
        listing = list_images(readings.frames, readings.classes, csv_paths, cache.digest)
    baseline = ModelFile.of(config.model.baseline, trust_code=config.model.trust_custom_code)
    if checked is None:
        checked = Checked(schedule=readings.schedule, plan=readings.plan)
        if record is not None:
            with storage_errors(layout.root, "the record of the checked inputs"):
                write_json(record, checked.model_dump(mode="json"))
    return RunInputs(
        listing=listing, baseline=baseline, baseline_keras3=keras3.written_by_keras3(baseline.path),
        schedule=checked.schedule, plan=checked.plan,
    )


class Checked(BaseModel):
    """What the stage checks concluded about a config, its CSVs and its baseline: kept so that a
    run of the same inputs need not load the baseline (and import TensorFlow) to check it again."""

    model_config = ConfigDict(frozen=True)

    schedule: Schedule
    plan: LayerPlan


def checked_record(
    config: RunConfig, csv_paths: dict[str, Path], layout: OutputLayout, stages: Sequence[Stage]
) -> Path | None:
    """Where the stage checks' conclusions about these inputs are kept: named by the digest of the
    config (but its output_root), the CSVs' and the baseline's contents and the checking code;
    None when the baseline is not a file (its check says what is wrong).

    It reads every stage's code version: the first call, as the run starts, fixes them for the
    process (code_version), so that an edit during the run does not change its keys.
    """
    baseline = config.model.baseline
    if not baseline.is_file():
        return None
    key = digest_of({
        "config": config.model_dump(mode="json", exclude={"output_root"}),
        "csvs": {split: file_digest(path) for split, path in csv_paths.items()},
        "baseline": file_digest(baseline), "code": {stage.name: stage.code for stage in stages},
        "checks": code_version(__name__),
    })
    return layout.checked / f"{key}.json"


def checked_before(config: RunConfig, stages: Sequence[Stage]) -> bool:
    """Whether check_inputs has a record of these inputs (then it will not load the baseline):
    a command that will need TensorFlow can import it early, while it waits for its server."""
    try:
        record = checked_record(config, csv_paths_of(config.dataset), OutputLayout(root=config.output_root), stages)
    except OSError:
        return False  # a CSV that cannot be read: check_inputs will say so
    return read_checked(record) is not None


def read_checked(record: Path | None) -> Checked | None:
    """The conclusions kept in `record`, or None (no record, or one that cannot be read: check again)."""
    if record is None or not record.is_file():
        return None
    try:
        return Checked.model_validate_json(record.read_text())
    except (OSError, ValueError):
        return None


def check_writable(output_root) -> None:
    """Refuse an output folder that cannot be created or written (a probe file, removed at once)."""
    with storage_errors(output_root, "into output_root"):
        output_root.mkdir(parents=True, exist_ok=True)
        probe = output_root / f".write-probe-{os.getpid()}"
        probe.write_bytes(b"ok")
        probe.unlink()


@task(cache_policy=NONE)
def check_inputs(config: RunConfig, from_deployment: bool, stages: Sequence[Stage]) -> RunInputs:
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
    return check_run_inputs(config, roots, stages)
