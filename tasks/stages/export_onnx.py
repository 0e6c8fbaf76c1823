"""The export_onnx_baseline and export_onnx_pruned stages: a Keras model as ONNX files (tf2onnx),
float32 and, through onnxruntime's static quantization, int8; each file's weights read back, and
for the pruned model, each pruned kernel found in every file with its zeros (as the TFLite
export proves them). The ONNX formats need the `onnx` extra; without any in export.formats the
stages store an empty export."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from pruneflow.tasks.core.stage import Stage
from pruneflow.tasks.libs import onnx
from pruneflow.tasks.libs.artifacts import ExportedModels, PreparedDataset, QuantizedModel, SanityReport
from pruneflow.tasks.libs.exporting import describe, export_files
from pruneflow.tasks.libs.models import ModelFile
from pruneflow.tasks.specs.config import ExportSpec

if TYPE_CHECKING:
    from pruneflow.tasks.libs.readings import Readings


def export_onnx(
    out: Path, model: ModelFile, dataset: PreparedDataset, export: ExportSpec, sanity: SanityReport | None,
    quantized: QuantizedModel | None,
) -> ExportedModels:
    """Convert the model to each ONNX format of `export` (see export_files)."""
    return export_files(
        out, model, dataset, export, sanity, quantized, convert=onnx.convert, read_weights=onnx.weight_tensors,
        converter_name="tf2onnx",
    )


def check_onnx_installed(readings: Readings) -> None:
    """An ONNX format is asked for only where the onnx extra is installed."""
    if readings.config.export_spec.made_by("onnx").formats:
        onnx.require_installed()


PACKAGES = ("tf2onnx", "onnx", "onnxruntime")  # the conversion and the quantization
export_onnx_baseline = Stage(
    "export_onnx_baseline", export_onnx, check=check_onnx_installed, describe=describe, packages=PACKAGES
)
export_onnx_pruned = Stage("export_onnx_pruned", export_onnx, describe=describe, packages=PACKAGES)
