"""Promotion: the file a sweep chose, with its Keras model, becomes OUTPUT_ROOT/promoted, whole or not at all.

`promoted` is a symlink to a version folder under `promoted-versions/`. A promotion writes the
new version completely under a temporary name, renames it into place, then switches the link
with one atomic rename. A reader, or a process killed at any point, sees the previous promoted
model or the new one, whole. The version the link pointed to before is kept until the next
promotion, so a reader that resolved the link just before a switch still reads one whole
version: resolve it once (`realpath promoted`) and read from there. What a killed promotion
leaves behind (a temporary folder, a version never linked, a spare link) is removed by the next
one. Promotions take turns on a lock. (Files are not fsynced: a power cut may lose the last
promotion.)
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from datetime import datetime, timezone
from pathlib import Path

from filelock import FileLock
from prefect import task
from prefect.cache_policies import NONE

from tasks.config import RunConfig
from tasks.files import atomic_path, storage_errors, write_json
from tasks.layout import OutputLayout
from tasks.log import run_logger
from tasks.gate import Candidate
from tasks.outcome import FORMAT_NAMES, KERAS

LINK_PREFIX = ".promoted-link-"  # a new link, before it replaces `promoted`
DEPLOYABLE = "model.tflite"  # the promoted TFLite file, whatever its format (metrics.json says which)


def write_version(chosen: Candidate, config: RunConfig, flow_run_id: str, layout: OutputLayout) -> Path:
    """A complete new version folder: the Keras model, the deployable file when it is a TFLite
    file (model.tflite), the config that made them, and their figures."""
    result, file = chosen
    stamp = f"{datetime.now(timezone.utc):%Y%m%dT%H%M%S}"
    version = layout.promoted_versions / f"{stamp}-{flow_run_id}-{uuid.uuid4().hex[:6]}"
    with atomic_path(version) as tmp:
        tmp.mkdir()
        shutil.copy2(result.pruned_model, tmp / "model.h5")
        if file.format != KERAS:
            shutil.copy2(file.path, tmp / DEPLOYABLE)
        write_json(tmp / "config.json", config.model_copy(update={"pruning": result.schedule}).model_dump(mode="json"))
        write_json(tmp / "metrics.json", {
            "flow_run_id": flow_run_id,
            "promoted_at": datetime.now().astimezone().isoformat(timespec="seconds"),
            **json.loads(result.model_dump_json(include={"target", "measured_sparsity"})),
            "baseline_accuracy": result.baseline.accuracy,
            # The promoted file's own figures (the TFLite file's, when it is one).
            "file": "model.h5" if file.format == KERAS else DEPLOYABLE,
            "accuracy_change": 100.0 * (file.accuracy - result.baseline.accuracy),
            **file.model_dump(mode="json", exclude={"model", "path"}),
            "source": str(file.path),
            # The Keras model beside it, always model.h5.
            "keras": {
                "file": "model.h5", "source": str(result.pruned_model), "accuracy": result.pruned.accuracy,
                "zip_bytes": result.sizes.pruned.zip_bytes, "zip_ratio": result.sizes.zip_ratio,
            },
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


def promote(chosen: Candidate, config: RunConfig, flow_run_id: str, layout: OutputLayout) -> Path:
    """Make the chosen file (and its Keras model) the promoted version, keeping the one it
    replaces for readers still on it; return the `promoted` link."""
    layout.promoted_versions.mkdir(parents=True, exist_ok=True)
    with FileLock(layout.promotion_lock):
        previous = layout.promoted.resolve() if layout.promoted.is_symlink() else None
        version = write_version(chosen, config, flow_run_id, layout)
        switch_link(layout, version)
        remove_unlinked(layout, keep=previous)
    return layout.promoted


@task(cache_policy=NONE)
def promote_model(chosen: Candidate, config: RunConfig, flow_run_id: str, layout: OutputLayout) -> Path:
    """Promote the chosen file (a full disk or read-only folder is a clear error)."""
    with storage_errors(layout.root, "the promoted model"):
        link = promote(chosen, config, flow_run_id, layout)
    result, file = chosen
    run_logger().info("Promoted the %.2f-sparsity model, as %s, to %s", result.target, FORMAT_NAMES[file.format], link)
    return link
