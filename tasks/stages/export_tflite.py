"""The export stages: a Keras model as the TFLite files a user deploys, and proof that the
pruned kernels are still sparse in them.

Formats (ExportConfig.formats): float32; float32 with the pruned kernels stored sparse
(`tf.lite.Optimize.EXPERIMENTAL_SPARSITY`); int8 full-integer post-training quantization,
calibrated on a fixed sample of the train split; int8 stored sparse; and the two int8_qat
formats, converted from the quantization-aware model (tasks.qat) rather than the stripped one.

Each file's kernels are read back from its flatbuffer with their zeros (a sparse tensor stores
its non-zeros only). For the pruned model, each kernel the sanity check measured is found in
every file (by layer name and shape) and must hold the Keras kernel's share of zeros (which
reached its target), within the tolerance either way (a few weights may round to zero in int8;
many more zeros means the file lost weights). Otherwise the stage fails,
naming the tensors and the format.
"""

from __future__ import annotations

from pathlib import Path

from pruneflow.tasks.core.errors import PruneflowError
from pruneflow.tasks.core.files import atomic_path, write_json
from pruneflow.tasks.core.log import run_logger
from pruneflow.tasks.core.stage import Stage
from pruneflow.tasks.libs.artifacts import ExportedFile, ExportedModels, PreparedDataset, QuantizedModel, SanityReport
from pruneflow.tasks.libs.compression import xz_size, zip_size
from pruneflow.tasks.libs.models import ModelFile
from pruneflow.tasks.libs.sparsity import sparsity_table
from pruneflow.tasks.libs.tflite import (
    _variants,
    check_kernels,
    convert,
    file_name,
    representative_images,
    weight_tensors,
)
from pruneflow.tasks.specs.config import ExportSpec, from_qat


def export_tflite(
    out: Path, model: ModelFile, dataset: PreparedDataset, export: ExportSpec, sanity: SanityReport | None,
    quantized: QuantizedModel | None,
) -> ExportedModels:
    """Convert the model (its quantization-aware version for the int8_qat formats) to each
    format, measure each file, and, for a pruned model (`sanity` given), check that its pruned
    kernels are still sparse in every file."""
    from pruneflow.tasks.core.runtime import keras

    keras.backend.clear_session()
    keras_model = model.load() if not all(from_qat(fmt) for fmt in export.formats) else None
    if export.wants_qat and (quantized is None or not quantized.trained):
        raise ValueError("the int8_qat formats need the quantize_train stage's model")
    qat_model = quantized.load() if export.wants_qat else None
    calibration = None
    if any(fmt.startswith("int8") for fmt in export.formats):
        calibration = representative_images(dataset, export.representative_images)
    files = []
    for fmt in export.formats:
        path = out / file_name(fmt)
        try:
            flatbuffer = convert(qat_model if from_qat(fmt) else keras_model, fmt, export, calibration)
        except Exception as error:  # the converter raises its own ConverterError, and others
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise PruneflowError(
                f"{model.path}: TFLite cannot convert the model to {fmt}: {first}. Leave {_variants(fmt)} out of "
                "export.formats."
            ) from error
        with atomic_path(path) as tmp:
            tmp.write_bytes(flatbuffer)
        weights = weight_tensors(path)
        sparsity = check_kernels(fmt, sanity, weights, model.path) if sanity is not None else []
        files.append(ExportedFile(
            format=fmt, file=path.name, raw_bytes=path.stat().st_size, zip_bytes=zip_size(path), xz_bytes=xz_size(path),
            weights=weights, sparsity=sparsity,
        ))
        if sanity is not None:
            run_logger().info("Sparsity of the pruned kernels in %s:\n%s", path.name, sparsity_table(sparsity))
    result = ExportedModels(folder=out, files=files)
    write_json(out / "export.json", result.model_dump(mode="json", exclude={"folder", "digest"}))
    return result


def describe(exported: ExportedModels) -> str:
    if not exported.files:
        return "no format to export (export.formats is empty)"
    return ", ".join(f"{f.format} {f.raw_bytes:,} B ({f.zip_bytes:,} B zipped)" for f in exported.files)


export_baseline = Stage("export_baseline", export_tflite, describe=describe)
export_pruned = Stage("export_pruned", export_tflite, describe=describe)
