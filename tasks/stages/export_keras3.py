"""The export_keras3_baseline and export_keras3_pruned stages: for a baseline that Keras 3 wrote, the
model handed back as a Keras 3 `.keras` file in the baseline's own architecture
(pruneflow.tasks.libs.keras3.hand_back), its weights the tf_keras model's, pruned zeros kept.

The file is checked to give the tf_keras model's outputs on the run's own images, and read back
with Keras 3 for its weights: for the pruned model, each kernel the sanity check measured must hold
its zeros there, as in every other deployable file. For a tf_keras baseline the format is not
asked for and the stages store an empty export.
"""

from __future__ import annotations

from pathlib import Path

from pruneflow.tasks.core.stage import Stage
from pruneflow.tasks.libs import keras3
from pruneflow.tasks.libs.artifacts import ExportedModels, PreparedDataset, SanityReport
from pruneflow.tasks.libs.dataset import representative_images
from pruneflow.tasks.libs.exporting import describe, export_files
from pruneflow.tasks.libs.models import ModelFile
from pruneflow.tasks.specs.config import ExportSpec


def export_keras3(
    out: Path, model: ModelFile, original: ModelFile, dataset: PreparedDataset, export: ExportSpec,
    sanity: SanityReport | None,
) -> ExportedModels:
    """Hand the tf_keras model's weights back to `original`'s Keras 3 architecture (see export_files)."""

    def hand_back(tf_keras_model, fmt, spec, calibration) -> bytes:
        handed = keras3.hand_back(tf_keras_model, keras3.load_keras3(original.path))
        images = representative_images(dataset, keras3.CHECK_IMAGES)
        keras3.compare_outputs(handed, tf_keras_model, images, original.path, handing_back=True)
        return keras3.archive_bytes(handed)

    return export_files(
        out, model, dataset, export, sanity, None, convert=hand_back, read_weights=keras3.weight_tensors,
        converter_name="Keras 3",
    )


export_keras3_baseline = Stage("export_keras3_baseline", export_keras3, describe=describe, packages=("keras",))
export_keras3_pruned = Stage("export_keras3_pruned", export_keras3, describe=describe, packages=("keras",))
