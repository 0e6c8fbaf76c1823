"""The translate_baseline stage: a baseline written by Keras 3 (which TFMOT cannot prune) rebuilt in
tf_keras with its weights (pruneflow.tasks.libs.keras3), checked to give the Keras 3 model's outputs on
the run's own images, and saved as the .h5 file every later stage reads. The flow runs it only for a
baseline that Keras 3 wrote; check_inputs has already translated it once (Readings), so a layer that
cannot be rebuilt is refused before any stage."""

from __future__ import annotations

from pathlib import Path

from pruneflow.tasks.core.stage import Stage
from pruneflow.tasks.libs import keras3
from pruneflow.tasks.libs.artifacts import PreparedDataset, TranslatedModel
from pruneflow.tasks.libs.dataset import representative_images
from pruneflow.tasks.libs.models import ModelFile, save_model


def translate_to_tf_keras(out: Path, baseline: ModelFile, dataset: PreparedDataset) -> TranslatedModel:
    """Rebuild the Keras 3 baseline in tf_keras, check it on the run's images, save it."""
    original = keras3.load_keras3(baseline.path)
    translated = keras3.translate(original, baseline.path)
    images = representative_images(dataset, keras3.CHECK_IMAGES)
    difference = keras3.compare_outputs(original, translated, images, baseline.path)
    save_model(translated, out / "baseline.h5")
    return TranslatedModel(
        folder=out, keras_version=keras3.saved_keras_version(baseline.path) or "3", max_abs_diff=difference,
        images=len(images),
    )


translate_baseline = Stage(
    "translate_baseline", translate_to_tf_keras,
    describe=lambda made: (
        f"Keras {made.keras_version} baseline rebuilt in tf_keras: outputs within {made.max_abs_diff:.2g} on "
        f"{made.images} images"
    ),
)
