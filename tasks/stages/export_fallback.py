"""The export_fallback_pruned stage: the int8_fallback file, int8 with the layers int8 hurts most
left in float (pruneflow.tasks.libs.float_fallback), chosen from quantization_error's table;
written, measured and checked for the pruned kernels' zeros like every TFLite file. The baseline
is compared in plain int8, its dense counterpart."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from pruneflow.tasks.core.errors import PruneflowError
from pruneflow.tasks.core.files import write_json
from pruneflow.tasks.core.stage import Stage
from pruneflow.tasks.libs import tflite
from pruneflow.tasks.libs.artifacts import (
    ExportedModels,
    FloatFallback,
    PreparedDataset,
    QuantizationErrors,
    SanityReport,
)
from pruneflow.tasks.libs.dataset import split_arrays
from pruneflow.tasks.libs.exporting import export_files
from pruneflow.tasks.libs.float_fallback import convert_with_fallback
from pruneflow.tasks.libs.models import ModelFile
from pruneflow.tasks.libs.selection import matches, walk
from pruneflow.tasks.specs.config import ExportSpec, FallbackSpec

if TYPE_CHECKING:
    from pruneflow.tasks.libs.readings import Readings


def export_fallback(
    out: Path, model: ModelFile, dataset: PreparedDataset, export: ExportSpec, fallback: FallbackSpec,
    errors: QuantizationErrors, sanity: SanityReport | None,
) -> ExportedModels:
    """Convert the model to the int8_fallback format if `export` has it (see export_files); each
    file records its float layers."""
    if not export.formats:
        return ExportedModels(folder=out, files=[])
    validation = split_arrays(dataset, "val") if fallback.layers == "auto" else None
    chosen: dict[str, FloatFallback] = {}

    def convert(keras_model, fmt, spec, calibration) -> bytes:
        data, chosen[fmt.name] = convert_with_fallback(keras_model, spec, calibration, errors.layers, fallback, validation)
        return data

    exported = export_files(
        out, model, dataset, export, sanity, None, convert=convert, read_weights=tflite.weight_tensors,
        converter_name="TFLite",
    )
    result = exported.model_copy(
        update={"files": [f.model_copy(update={"fallback": chosen[f.format]}) for f in exported.files]}
    )
    write_json(out / "export.json", result.model_dump(mode="json", exclude={"folder", "digest"}))
    return result


def check_fallback(readings: Readings) -> None:
    """With int8_fallback asked for by layer names or patterns, each names a layer of the baseline."""
    config = readings.config
    patterns = config.export.float_fallback
    if "int8_fallback" not in config.export.formats or not isinstance(patterns, list):
        return
    layers = list(walk(readings.baseline_model))
    unmatched = [p for p in patterns if not any(matches(p, path, layer) for path, layer in layers)]
    if unmatched:
        raise PruneflowError(
            f"{config.model.baseline}: export.float_fallback {unmatched} match no layer; the layers are: "
            f"{', '.join(path for path, _ in layers)}."
        )


def describe(exported: ExportedModels) -> str:
    if not exported.files:
        return "no format to export"
    return ", ".join(
        f"{f.format} {f.raw_bytes:,} B ({f.zip_bytes:,} B zipped), float: {', '.join(f.fallback.layers) or 'none'}"
        for f in exported.files
    )


export_fallback_pruned = Stage("export_fallback_pruned", export_fallback, check=check_fallback, describe=describe)
