"""What every conversion stage does around its converter: load the Keras model each format is made
from, calibrate the int8 formats on the same training images, write each file atomically, measure
it, and, for a pruned model, prove that its pruned kernels kept their zeros in the file."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from pruneflow.tasks.core.errors import PruneflowError
from pruneflow.tasks.core.files import atomic_path, write_json
from pruneflow.tasks.core.log import run_logger
from pruneflow.tasks.libs.artifacts import (
    ExportedFile,
    ExportedModels,
    PreparedDataset,
    QuantizedModel,
    SanityReport,
    WeightTensor,
)
from pruneflow.tasks.libs.compression import xz_size, zip_size
from pruneflow.tasks.libs.dataset import calibration_draw
from pruneflow.tasks.libs.file_kernels import check_kernels
from pruneflow.tasks.libs.models import ModelFile
from pruneflow.tasks.libs.sparsity import sparsity_table
from pruneflow.tasks.specs.config import ExportSpec
from pruneflow.tasks.specs.formats import FORMATS, Format, variants_of

# (Keras model, format, spec, calibration images or None) -> the file's bytes
Converter = Callable[[object, Format, ExportSpec, "np.ndarray | None"], bytes]


def export_files(
    out: Path, model: ModelFile, dataset: PreparedDataset, export: ExportSpec, sanity: SanityReport | None,
    quantized: QuantizedModel | None, convert: Converter, read_weights: Callable[[Path], list[WeightTensor]],
    converter_name: str,
) -> ExportedModels:
    """Convert the model (quantize_train's quantization-aware model for the formats made from it)
    to each format of `export`, measure each file, and, for a pruned model (`sanity` given),
    check that its pruned kernels are still sparse in every file.

    Raises:
        PruneflowError: the converter cannot convert the model to a format, or a file lost the
            pruned kernels' zeros (or more weights than the pruning zeroed).
    """
    from pruneflow.tasks.core.runtime import keras

    keras.backend.clear_session()
    formats = [FORMATS[name] for name in export.formats]
    sources = {fmt.source for fmt in formats}
    if "qat" in sources and (quantized is None or not quantized.trained):
        raise ValueError("the formats made from the quantization-aware model need the quantize_train stage's model")
    models = {"stripped": model.load() if "stripped" in sources else None, "qat": quantized.load() if "qat" in sources else None}
    calibration, drawn = (calibration_draw(dataset, export.representative_images) if any(f.int8 for f in formats)
                          else (None, None))
    if drawn is not None and drawn.warning():
        run_logger().warning("%s: %s", model.path.name, drawn.warning())
    files = []
    for fmt in formats:
        path = out / fmt.file
        try:
            data = convert(models[fmt.source], fmt, export, calibration)
        except PruneflowError:
            raise
        except Exception as error:  # each converter raises its own errors
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise PruneflowError(
                f"{model.path}: {converter_name} cannot convert the model to {fmt.name}: {first}. Leave "
                f"{', '.join(variants_of(fmt.name))} out of export.formats."
            ) from error
        with atomic_path(path) as tmp:
            tmp.write_bytes(data)
        weights = read_weights(path)
        sparsity = check_kernels(fmt.name, sanity, weights, model.path) if sanity is not None else []
        files.append(ExportedFile(
            format=fmt.name, file=path.name, raw_bytes=path.stat().st_size, zip_bytes=zip_size(path),
            xz_bytes=xz_size(path), weights=weights, sparsity=sparsity,
        ))
        if sanity is not None:
            run_logger().info("Sparsity of the pruned kernels in %s:\n%s", path.name, sparsity_table(sparsity))
    result = ExportedModels(folder=out, files=files, calibration=drawn)
    write_json(out / "export.json", result.model_dump(mode="json", exclude={"folder", "digest"}))
    return result


def describe(exported: ExportedModels) -> str:
    if not exported.files:
        return "no format to export"
    return ", ".join(f"{f.format} {f.raw_bytes:,} B ({f.zip_bytes:,} B zipped)" for f in exported.files)
