"""The export_baseline and export_pruned stages: a Keras model as the TFLite files a user deploys,
and proof that the pruned kernels are still sparse in them.

The TFLite formats (pruneflow.tasks.specs.formats): float32; float32 with the pruned kernels
stored sparse (`tf.lite.Optimize.EXPERIMENTAL_SPARSITY`); int8 full-integer post-training
quantization, calibrated on a fixed sample of the train split; int8 stored sparse; and the two
int8_qat formats, converted from the quantization-aware model (quantize_train) rather than the
stripped one.

Each file's kernels are read back from its flatbuffer with their zeros (a sparse tensor stores
its non-zeros only). For the pruned model, each kernel the sanity check measured is found in
every file (by layer name and shape) and must hold the Keras kernel's share of zeros (which
reached its target), within the tolerance either way (a few weights may round to zero in int8;
many more zeros means the file lost weights). Otherwise the stage fails, naming the tensors and
the format.
"""

from __future__ import annotations

from pathlib import Path

from pruneflow.tasks.core.stage import Stage
from pruneflow.tasks.libs import tflite
from pruneflow.tasks.libs.artifacts import ExportedModels, PreparedDataset, QuantizedModel, SanityReport
from pruneflow.tasks.libs.exporting import describe, export_files
from pruneflow.tasks.libs.models import ModelFile
from pruneflow.tasks.specs.config import ExportSpec


def export_tflite(
    out: Path, model: ModelFile, dataset: PreparedDataset, export: ExportSpec, sanity: SanityReport | None,
    quantized: QuantizedModel | None,
) -> ExportedModels:
    """Convert the model to each TFLite format of `export` (see export_files)."""
    return export_files(
        out, model, dataset, export, sanity, quantized, convert=tflite.convert, read_weights=tflite.weight_tensors,
        converter_name="TFLite",
    )


export_baseline = Stage("export_baseline", export_tflite, describe=describe)
export_pruned = Stage("export_pruned", export_tflite, describe=describe)
