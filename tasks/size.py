"""Size measurement: baseline and pruned model, saved alike, raw and compressed."""

from __future__ import annotations

import gzip
import io
import zipfile
from pathlib import Path

import numpy as np
from prefect import get_run_logger, task
from pydantic import BaseModel, ConfigDict, computed_field

from tasks.files import file_digest, write_json
from tasks.models import load_model, save_model
from tasks.store import ARTIFACT_CACHE, ArtifactStore, StoredArtifact, code_version, stage_key

STAGE = "measure_size"


class ModelSize(BaseModel):
    """One model file's size, and the bytes its non-zero weights need at the least."""

    model_config = ConfigDict(frozen=True)

    file: str  # its name in the size artifact's folder
    raw_bytes: int
    zip_bytes: int
    gzip_bytes: int
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
    def gzip_ratio(self) -> float:
        return self.baseline.gzip_bytes / self.pruned.gzip_bytes

    @computed_field
    @property
    def raw_ratio(self) -> float:
        return self.baseline.raw_bytes / self.pruned.raw_bytes


def zip_size(path: Path) -> int:
    """Bytes of a zip archive holding the file, deflated (the tutorial's measure)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.write(path, arcname=path.name)
    return buffer.getbuffer().nbytes


def gzip_size(path: Path) -> int:
    """Bytes of the file gzipped at the highest level."""
    return len(gzip.compress(path.read_bytes(), compresslevel=9))


def save_and_measure(model_path: Path, out_path: Path) -> ModelSize:
    """Re-save a model as .h5 without optimizer state, then measure that file."""
    model = load_model(model_path)
    save_model(model, out_path)
    values = [w.numpy() for w in model.weights]
    return ModelSize(
        file=out_path.name,
        raw_bytes=out_path.stat().st_size,
        zip_bytes=zip_size(out_path),
        gzip_bytes=gzip_size(out_path),
        weights=int(sum(v.size for v in values)),
        nonzero_weights=int(sum(np.count_nonzero(v) for v in values)),
    )


def compare_sizes(baseline_path: Path, pruned_path: Path, out_dir: Path) -> SizeReport:
    """Save both models the same way (.h5, no optimizer) so the sizes compare like with like."""
    from tasks.runtime import keras

    keras.backend.clear_session()
    return SizeReport(
        folder=out_dir,
        baseline=save_and_measure(baseline_path, out_dir / "baseline.h5"),
        pruned=save_and_measure(pruned_path, out_dir / "pruned.h5"),
    )


def size_key(baseline_path: Path, stripped: StoredArtifact) -> str:
    inputs = {"baseline": file_digest(baseline_path), "pruned": stripped.digest}
    return stage_key(STAGE, code_version(__name__, "tasks.models"), inputs)


@task(cache_policy=ARTIFACT_CACHE, persist_result=True)
def measure_size(store: ArtifactStore, key: str, baseline_path: Path, pruned_path: Path) -> SizeReport:
    """Bytes on disk, zip-deflated and gzipped, for the baseline and the pruned model."""

    def measure(tmp: Path) -> SizeReport:
        report = compare_sizes(baseline_path, pruned_path, tmp)
        write_json(tmp / "sizes.json", report.model_dump(mode="json", exclude={"folder", "digest"}))
        return report

    report = store.produce(STAGE, key, SizeReport, measure)
    get_run_logger().info(
        "Size: baseline %d B zipped, pruned %d B zipped (%.2fx smaller); pruned floor %d B",
        report.baseline.zip_bytes, report.pruned.zip_bytes, report.zip_ratio, report.pruned.floor_bytes,
    )
    return store.stored(STAGE, key, report)
