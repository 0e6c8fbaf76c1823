"""The measure_size stage: baseline and pruned model, saved alike, measured raw and compressed."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from pruneflow.tasks.core.files import write_json
from pruneflow.tasks.core.stage import Stage
from pruneflow.tasks.libs.artifacts import ModelSize, SizeReport
from pruneflow.tasks.libs.compression import xz_size, zip_size
from pruneflow.tasks.libs.models import ModelFile, save_model
from pruneflow.tasks.specs.formats import FORMATS, KERAS


def save_and_count(model_file: ModelFile, out_path: Path) -> tuple[int, int]:
    """Re-save a model as .h5 without optimizer state; return its weights and non-zero weights."""
    model = model_file.load()
    save_model(model, out_path)
    values = [w.numpy() for w in model.weights]
    return int(sum(v.size for v in values)), int(sum(np.count_nonzero(v) for v in values))


def compare_sizes(out: Path, baseline: ModelFile, pruned: ModelFile) -> SizeReport:
    """Bytes on disk, zip-deflated and xz-compressed, of both models saved the same way (.h5, no
    optimizer), so the sizes compare like with like; sizes.json holds the figures.

    The four compressions run at once (zlib and lzma release the GIL): xz at preset 9 is most of
    this stage's time.
    """
    from pruneflow.tasks.core.runtime import keras

    keras.backend.clear_session()
    # The pruned model's file is named as its format names it: the name is part of its zip-deflated size.
    files = {"baseline": out / "baseline.h5", "pruned": out / FORMATS[KERAS].file}
    counts = {"baseline": save_and_count(baseline, files["baseline"]), "pruned": save_and_count(pruned, files["pruned"])}
    with ThreadPoolExecutor(max_workers=4) as pool:
        zipped = {name: pool.submit(zip_size, path) for name, path in files.items()}
        xzed = {name: pool.submit(xz_size, path) for name, path in files.items()}
    sizes = {
        name: ModelSize(
            file=path.name, raw_bytes=path.stat().st_size, zip_bytes=zipped[name].result(),
            xz_bytes=xzed[name].result(), weights=counts[name][0], nonzero_weights=counts[name][1],
        )
        for name, path in files.items()
    }
    report = SizeReport(folder=out, **sizes)
    write_json(out / "sizes.json", report.model_dump(mode="json", exclude={"folder", "digest"}))
    return report


def describe(report: SizeReport) -> str:
    return (
        f"baseline {report.baseline.zip_bytes:,} B zipped, pruned {report.pruned.zip_bytes:,} B zipped "
        f"({report.zip_ratio:.2f}x smaller); pruned floor {report.pruned.floor_bytes:,} B"
    )


measure_size = Stage("measure_size", compare_sizes, describe=describe)
