"""translate_baseline and export_keras3 over every Keras 3 model shape: the translation stored and
checked, pruned by TFMOT in tf_keras, handed back as a Keras 3 file that keeps the zeros."""

import numpy as np
import pytest

from pruneflow.tasks.libs import keras3
from pruneflow.tasks.libs.models import ModelFile, load_model
from pruneflow.tasks.specs.formats import KERAS3
from tests.helpers.keras3_models import KERAS3_KINDS, build_keras3, save_keras3, shake_weights


@pytest.mark.parametrize("kind", sorted(KERAS3_KINDS))
def test_each_keras_3_shape_is_translated_pruned_and_handed_back_with_its_zeros(
    kind, tiny_config, tiny_prepared, tmp_path
):
    from pruneflow.tasks.libs.dataset import load_split
    from pruneflow.tasks.libs.schedule import resolve_schedule
    from pruneflow.tasks.libs.selection import plan_for
    from pruneflow.tasks.stages.export_keras3 import export_keras3
    from pruneflow.tasks.stages.prune_train import train_pruned
    from pruneflow.tasks.stages.sanity_check import measure_sparsity
    from pruneflow.tasks.stages.strip import strip_model
    from pruneflow.tasks.stages.translate_baseline import translate_to_tf_keras

    model = build_keras3(kind)
    shake_weights(model)
    original = ModelFile.of(save_keras3(model, tmp_path / "baseline.keras"))
    for name in ("translated", "trained", "stripped", "handed"):
        (tmp_path / name).mkdir()

    translated = translate_to_tf_keras(tmp_path / "translated", original, tiny_prepared)
    assert translated.keras_version.startswith("3.") and translated.max_abs_diff <= keras3.OUTPUT_ATOL
    assert not keras3.written_by_keras3(translated.model)  # a tf_keras file, which TFMOT can read
    images, _ = next(iter(load_split(tiny_prepared, "test", 12)))
    np.testing.assert_allclose(load_model(translated.model)(images).numpy(), np.asarray(model(images)), atol=1e-5)

    spec = tiny_config.training_spec
    schedule = resolve_schedule(tiny_config.pruning, spec.steps_per_epoch(tiny_prepared.counts["train"]), 2)
    trained = train_pruned(tmp_path / "trained", tmp_path / "work", tiny_prepared, translated.file, schedule, spec)
    stripped = strip_model(tmp_path / "stripped", trained, tiny_prepared)
    pruned_model = load_model(stripped.model)
    sanity = measure_sparsity(pruned_model, plan_for(pruned_model, schedule, spec, stripped.model), 0.5, 0.02)
    assert sanity.tensors and all(t.passed for t in sanity.tensors)

    export = tiny_config.export_spec.with_keras3().made_by("keras3")
    exported = export_keras3(tmp_path / "handed", stripped.file, original, tiny_prepared, export, sanity)
    [file] = exported.files
    assert file.format == KERAS3 and (tmp_path / "handed" / file.file).is_file()
    assert len(file.sparsity) == len(sanity.tensors) and all(t.passed and t.sparsity >= 0.49 for t in file.sparsity)
    handed = keras3.load_keras3(tmp_path / "handed" / file.file)
    assert type(handed).__name__ == type(model).__name__ and [lyr.name for lyr in handed.layers] == [
        lyr.name for lyr in model.layers
    ]  # the baseline's own architecture
    np.testing.assert_allclose(np.asarray(handed(images)), pruned_model(images).numpy(), atol=1e-5)
