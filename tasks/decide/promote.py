"""Promotion: the file a sweep chose, with its Keras model, becomes OUTPUT_ROOT/promoted (and, with
a registry, the `champion` version of the registered model), whole or not at all.

`promoted` is a symlink to a version folder under `promoted-versions/`. A promotion writes the
new version completely under a temporary name, renames it into place, then switches the link
with one atomic rename: a reader sees the previous promoted model or the new one, whole. The
version the link pointed to before is kept until the next promotion, so a reader that resolved
the link just before a switch still reads one whole version: resolve it once (`realpath
promoted`) and read from there.

With a registry, a promotion has two places to change, which no single rename covers. So it
first writes a journal (OUTPUT_ROOT/.promotion.json: what was promoted before, in the folder and
in the registry), then writes the version folder, registers it in MLflow, switches the link,
moves the `champion` alias, and commits by removing the journal. A step that raises rolls the
promotion back at once; a promotion killed between two steps leaves its journal, and the next
sweep (or `roll_back`) rolls it back before it reads the champion: the link and the alias go
back to the previous champion, the version registered on the way is tagged rolled back. What a
killed promotion leaves behind (a temporary folder, a version never linked, a spare link) is
removed by the next one. Promotions take turns on a lock. (Files are not fsynced: a power cut
may lose the last promotion.)
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

from filelock import FileLock, Timeout
from prefect import task
from prefect.cache_policies import NONE
from pydantic import BaseModel, ConfigDict

from pruneflow.tasks.core.files import atomic_path, storage_errors, write_json
from pruneflow.tasks.core.layout import OutputLayout
from pruneflow.tasks.core.log import run_logger
from pruneflow.tasks.decide.champion import Decision
from pruneflow.tasks.decide.gate import Candidate
from pruneflow.tasks.decide.registry import CHAMPION, SweepRun, champion_version, mark_rolled_back, move_champion
from pruneflow.tasks.specs.config import RegistryConfig, RunConfig
from pruneflow.tasks.specs.formats import FORMATS, KERAS, KERAS3, display_name
from pruneflow.tasks.unkeyed.faults import fault_point

LINK_PREFIX = ".promoted-link-"  # a new link, before it replaces `promoted`


def write_version(chosen: Candidate, config: RunConfig, flow_run_id: str, layout: OutputLayout) -> Path:
    """A complete new version folder: the Keras model (model.h5), for a Keras 3 baseline the Keras 3
    model handed back (model.keras), the deployable file when it is another format (named as its
    format promotes it: model.tflite), the config that made them, and their figures."""
    result, file = chosen
    keras3 = next((d for d in result.deployables if d.model == "pruned" and d.format == KERAS3), None)
    stamp = f"{datetime.now(timezone.utc):%Y%m%dT%H%M%S}"
    version = layout.promoted_versions / f"{stamp}-{flow_run_id}-{uuid.uuid4().hex[:6]}"
    with atomic_path(version) as tmp:
        tmp.mkdir()
        shutil.copy2(result.pruned_model, tmp / FORMATS[KERAS].promoted_file)
        if file.format != KERAS:
            shutil.copy2(file.path, tmp / FORMATS[file.format].promoted_file)
        if keras3 is not None and file.format != KERAS3:
            shutil.copy2(keras3.path, tmp / FORMATS[KERAS3].promoted_file)
        point_config = config.with_channels(result.channel_fraction).model_copy(update={"pruning": result.schedule})
        write_json(tmp / "config.json", point_config.model_dump(mode="json"))  # the run that made this model
        write_json(tmp / "metrics.json", {
            "flow_run_id": flow_run_id,
            "promoted_at": datetime.now().astimezone().isoformat(timespec="seconds"),
            **json.loads(result.model_dump_json(include={"target", "channel_fraction", "measured_sparsity"})),
            "baseline_accuracy": result.baseline.accuracy,
            # The promoted file's own figures (the exported file's, when it is one).
            "file": FORMATS[file.format].promoted_file,
            "accuracy_change": 100.0 * (file.accuracy - result.baseline.accuracy),
            **file.model_dump(mode="json", exclude={"model", "path"}),
            "source": str(file.path),
            # The Keras model beside it, always model.h5.
            "keras": {
                "file": FORMATS[KERAS].promoted_file, "source": str(result.pruned_model), "accuracy": result.pruned.accuracy,
                "zip_bytes": result.sizes.pruned.zip_bytes, "zip_ratio": result.sizes.zip_ratio,
            },
            # The Keras 3 model beside it, for a Keras 3 baseline: model.keras.
            **({"keras3": {
                "file": FORMATS[KERAS3].promoted_file, "source": str(keras3.path), "accuracy": keras3.accuracy,
                "zip_bytes": keras3.zip_bytes, "zip_ratio": keras3.zip_ratio,
            }} if keras3 is not None else {}),
        })
    return version


def switch_link(layout: OutputLayout, version: Path) -> None:
    """Point `promoted` at `version` with one rename: never missing, never half-switched."""
    new_link = layout.root / f"{LINK_PREFIX}{uuid.uuid4().hex[:6]}"
    new_link.symlink_to(version.relative_to(layout.root), target_is_directory=True)
    os.replace(new_link, layout.promoted)


def remove_unlinked(layout: OutputLayout, keep: Path | None = None) -> None:
    """Remove every version but the one `promoted` points to and `keep`, and what a killed
    promotion left behind."""
    kept = {layout.promoted.resolve() if layout.promoted.is_symlink() else None, keep and keep.resolve()}
    for entry in layout.promoted_versions.iterdir():
        if entry.resolve() not in kept:
            shutil.rmtree(entry, ignore_errors=True)
    for link in layout.root.glob(f"{LINK_PREFIX}*"):
        link.unlink()


class Journal(BaseModel):
    """A promotion under way: what to put back if it does not finish."""

    model_config = ConfigDict(frozen=True)

    flow_run_id: str
    previous: str | None  # the version folder `promoted` pointed to
    version: str | None = None  # the new version folder, once written
    registry: RegistryConfig | None = None  # where the new version is registered, with a registry
    previous_registered: str | None = None  # the version the `champion` alias pointed to
    registered: str | None = None  # the version this promotion registered


def record(layout: OutputLayout, journal: Journal) -> Journal:
    write_json(layout.promotion_journal, journal.model_dump(mode="json"))
    return journal


def roll_back(layout: OutputLayout) -> Journal | None:
    """Undo a promotion that did not finish (its journal is there): the link first, then the
    registry, the journal last, so that a roll-back cut short is done again by the next one.
    Call it holding the promotion lock; the journal it undid, or None."""
    if not layout.promotion_journal.is_file():
        return None
    journal = Journal.model_validate_json(layout.promotion_journal.read_text())
    if journal.previous is not None:
        switch_link(layout, layout.promoted_versions / journal.previous)
    elif layout.promoted.is_symlink():
        layout.promoted.unlink()
    if journal.registry is not None:
        move_champion(journal.registry, journal.previous_registered)
        if journal.registered is not None:
            mark_rolled_back(journal.registry, journal.registered)
    layout.promotion_journal.unlink()
    run_logger().warning(
        "Rolled back the promotion of flow run %s, which did not finish: promoted is %s again%s",
        journal.flow_run_id, journal.previous or "unset",
        f", and the champion alias version {journal.previous_registered or 'unset'}" if journal.registry else "",
    )
    return journal


@contextlib.contextmanager
def promotion_lock(layout: OutputLayout) -> Iterator[None]:
    """Hold the promotion lock, saying so in the log when another promotion holds it."""
    lock = FileLock(layout.promotion_lock)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        run_logger().info("Another promotion is under way in %s: waiting for it to finish", layout.root)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def recover(layout: OutputLayout) -> Journal | None:
    """Roll back a promotion that was killed, before anything reads the champion."""
    if not layout.promotion_journal.is_file():
        return None
    with promotion_lock(layout):
        return roll_back(layout)


def promote(
    chosen: Candidate, config: RunConfig, flow_run_id: str, layout: OutputLayout, registry: SweepRun | None = None,
    champion: str | None = None,
) -> str | None:
    """Make the chosen file (and its Keras model) the promoted version, and with a registry its
    `champion` version, keeping the folder it replaces for readers still on it.

    Args:
        champion: the version folder the challenger was measured against (None: there was none).

    Returns:
        None, or the version folder another run promoted since the champion was measured ("" when
        the champion's link was removed since): then nothing is done, since the challenger has not
        been measured against what is promoted now.
    """
    layout.promoted_versions.mkdir(parents=True, exist_ok=True)
    with promotion_lock(layout):
        roll_back(layout)
        previous = layout.promoted.resolve() if layout.promoted.is_symlink() else None
        if (previous and previous.name) != champion:
            return previous.name if previous else ""
        journal = record(layout, Journal(
            flow_run_id=flow_run_id, previous=previous and previous.name,
            registry=registry and registry.spec, previous_registered=registry and champion_version(registry.spec),
        ))
        try:
            version = write_version(chosen, config, flow_run_id, layout)
            journal = record(layout, journal.model_copy(update={"version": version.name}))
            fault_point("promote:written")
            if registry is not None:
                registered = registry.register(version, version_tags(chosen, flow_run_id, version))
                journal = record(layout, journal.model_copy(update={"registered": registered}))
            fault_point("promote:registered")
            switch_link(layout, version)
            fault_point("promote:linked")
            if registry is not None:
                move_champion(registry.spec, journal.registered)
            fault_point("promote:aliased")
        except BaseException:
            roll_back(layout)
            raise
        layout.promotion_journal.unlink()  # the commit
        remove_unlinked(layout, keep=previous)
    return None


def version_tags(chosen: Candidate, flow_run_id: str, version: Path) -> dict[str, str]:
    """What a registered version says of itself: where it came from and its figures."""
    result, file = chosen
    return {
        "pruneflow.flow_run_id": flow_run_id, "pruneflow.version_folder": version.name,
        "target": f"{result.target:g}", "channel_fraction": f"{result.channel_fraction:g}", "format": file.format,
        "accuracy": f"{file.accuracy:.4f}",
        "zip_bytes": str(file.zip_bytes), "baseline_accuracy": f"{result.baseline.accuracy:.4f}",
    }


@task(cache_policy=NONE)
def promote_model(
    chosen: Candidate, decision: Decision, config: RunConfig, flow_run_id: str, layout: OutputLayout,
    registry: SweepRun | None = None,
) -> Decision:
    """Promote the chosen file (a full disk or read-only folder is a clear error); the decision,
    superseded if another run promoted a file since this one measured the champion."""
    with storage_errors(layout.root, "the promoted model"):
        current = promote(
            chosen, config, flow_run_id, layout, registry, decision.champion and decision.champion.version
        )
    if current is not None:
        run_logger().warning("Not promoted: %s", (decision := decision.superseded(current)).reasons[-1])
        return decision
    result, file = chosen
    run_logger().info(
        "Promoted the %s-sparsity model, as %s, to %s%s", result.point.label(), display_name(file.format), layout.promoted,
        f" and as version {champion_version(registry.spec)} ({CHAMPION}) of {registry.spec.model_name!r}" if registry else "",
    )
    return decision
