"""The prepare_dataset stage: every listed image decoded once, resized, and stored as TFRecords
with the manifest and the classes, so that no later stage decodes a JPEG again."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pruneflow.tasks.core.errors import PruneflowError
from pruneflow.tasks.core.log import run_logger
from pruneflow.tasks.core.stage import Stage
from pruneflow.tasks.specs.config import ImageShape

if TYPE_CHECKING:
    from pruneflow.tasks.libs.readings import Readings
from pruneflow.tasks.libs.artifacts import PreparedDataset
from pruneflow.tasks.libs.dataset import MAX_LISTED, DatasetListing, split_warnings, write_records


def write_prepared(out: Path, listing: DatasetListing, shape: ImageShape) -> PreparedDataset:
    """Decode every listed image to `shape` and store the splits, the manifest and the labels.

    Raises:
        PruneflowError: an image is missing or unreadable (all of them are listed, up to a cap).
    """
    index = {label: i for i, label in enumerate(listing.classes)}
    problems = []
    for split, rows in listing.splits.items():
        problems += write_records(rows.paths, [index[label] for label in rows.labels], shape, out / f"{split}.tfrecord")
    if problems:
        shown = "\n  ".join(problems[:MAX_LISTED])
        more = f"\n  ... and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
        raise PruneflowError(
            f"{len(problems)} image(s) listed in the dataset CSVs cannot be read:\n  {shown}{more}\n"
            "Fix or remove those files, or delete their rows from the CSV."
        )

    # Filenames as the CSVs give them, relative to their folder: the artifact's content, and so
    # the digest later stages key on, does not depend on where the dataset lives.
    manifest = pd.DataFrame([
        {"filename": name, "label": label, "label_index": index[label], "split": split, "digest": digest}
        for split, rows in listing.splits.items()
        for name, label, digest in zip(rows.filenames, rows.labels, rows.digests)
    ]).astype({"label_index": "int32"})
    pq.write_table(pa.Table.from_pandas(manifest, preserve_index=False), out / "manifest.parquet")
    (out / "labels.json").write_text(json.dumps({"classes": listing.classes}, indent=2) + "\n")
    return PreparedDataset(
        folder=out, classes=listing.classes, counts=listing.counts,
        image_shape=(shape.height, shape.width, shape.channels), warnings=listing.warnings,
    )


def check_dataset(readings: Readings) -> None:
    """The CSVs are readable and well formed, no image is in two splits, and the labels fit;
    what is only worth a warning is logged."""
    for warning in split_warnings(readings.frames):
        run_logger().warning("Dataset: %s", warning)
    readings.classes  # noqa: B018 (encoding them is the check)


def describe(prepared: PreparedDataset) -> str:
    counts = ", ".join(f"{split} {n}" for split, n in prepared.counts.items())
    return f"{sum(prepared.counts.values())} images ({counts}), {len(prepared.classes)} classes: {', '.join(prepared.classes)}"


prepare_dataset = Stage("prepare_dataset", write_prepared, check=check_dataset, describe=describe)
