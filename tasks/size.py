"""The measure_size stage: baseline and pruned model, saved alike, measured raw and compressed."""

from __future__ import annotations

import io
import lzma
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, computed_field

from tasks.files import write_json
from tasks.models import ModelFile, save_model
from tasks.stage import Stage
from tasks.store import StoredArtifact


class ModelSize(BaseModel):
    """One model file's size, and the bytes its non-zero weights need at the least."""

    model_config = ConfigDict(frozen=True)

    file: str  # its name in the size artifact's folder
    raw_bytes: int
    zip_bytes: int
    xz_bytes: int
    weights: int
    nonzero_weights: int

    @computed_field
    @property
    def floor_bytes(self) -> int:
        """Non-zero weights x 4 bytes (float32): what no encoding of the values goes below."""
        return self.nonzero_weights * 4


class SizeReport(StoredArtifact):
    """Baseline against pruned; ratios are baseline / pruned (higher is smaller)."""

    baseline: ModelSize
    pruned: ModelSize

    @computed_field
    @property
    def zip_ratio(self) -> float:
        return self.baseline.zip_bytes / self.pruned.zip_bytes

    @computed_field
    @property
    def xz_ratio(self) -> float:
        return self.baseline.xz_bytes / self.pruned.xz_bytes

    @computed_field
    @property
    def raw_ratio(self) -> float:
        return self.baseline.raw_bytes / self.pruned.raw_bytes


PRUNED_H5 = "pruned.h5"  # the pruned model's file as measured (its name is part of its zip-deflated size)


def zip_size(path: Path, name: str | None = None) -> int:
    """Bytes of a zip archive holding the file, deflated (the tutorial's measure), as a member
    called `name` (default: the file's own name; the archive stores it, so it counts)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.write(path, arcname=name or path.name)
    return buffer.getbuffer().nbytes


def xz_size(path: Path) -> int:
    """Bytes of the file compressed with xz (LZMA2) at preset 9: the strongest compressor of
    Python's standard library, and a common format for shipping files."""
    return len(lzma.compress(path.read_bytes(), preset=9))


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
    from tasks.runtime import keras

    keras.backend.clear_session()
    files = {"baseline": out / "baseline.h5", "pruned": out / PRUNED_H5}
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
