"""translate_baseline and export_keras3 over every Keras 3 model shape: the translation stored and
checked, pruned by TFMOT in tf_keras, handed back as a Keras 3 file that keeps the zeros."""

from types import SimpleNamespace

import numpy as np
import pytest

from pruneflow.tasks.libs import keras3
from pruneflow.tasks.libs.models import ModelFile, load_model
from pruneflow.tasks.specs.config import LayerSelection
from pruneflow.tasks.specs.formats import KERAS3
from tests.helpers.keras3_models import KERAS3_KINDS, build_keras3, save_keras3, shake_weights


def through_the_stages(kind: str, config, prepared, folder):
    """A Keras 3 model of `kind` through translate_baseline, prune_train, strip, the sanity check and
    export_keras3's build functions, pruned as `config` says; what each made."""
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
    original = ModelFile.of(save_keras3(model, folder / "baseline.keras"))
    for name in ("translated", "trained", "stripped", "handed"):
        (folder / name).mkdir()

    translated = translate_to_tf_keras(folder / "translated", original, prepared)
    images, _ = next(iter(load_split(prepared, "test", 12)))
    spec = config.training_spec
    schedule = resolve_schedule(config.pruning, spec.steps_per_epoch(prepared.counts["train"]), 2)
    trained = train_pruned(folder / "trained", folder / "work", prepared, translated.file, schedule, spec)
    stripped = strip_model(folder / "stripped", trained, prepared)
    pruned_model = load_model(stripped.model)
    sanity = measure_sparsity(pruned_model, plan_for(pruned_model, schedule, spec, stripped.model), 0.5, 0.02)
    export = config.export_spec.with_keras3().made_by("keras3")
    exported = export_keras3(folder / "handed", stripped.file, original, prepared, export, sanity)
    return SimpleNamespace(
        model=model, translated=translated, images=images, pruned_model=pruned_model, sanity=sanity, exported=exported
    )


@pytest.mark.parametrize("kind", sorted(KERAS3_KINDS))
def test_each_keras_3_shape_is_translated_pruned_and_handed_back_with_its_zeros(
    kind, tiny_config, tiny_prepared, tmp_path
):
    made = through_the_stages(kind, tiny_config, tiny_prepared, tmp_path)
    model, translated, images, sanity = made.model, made.translated, made.images, made.sanity
    assert translated.keras_version.startswith("3.") and translated.max_abs_diff <= keras3.OUTPUT_ATOL
    assert not keras3.written_by_keras3(translated.model)  # a tf_keras file, which TFMOT can read
    np.testing.assert_allclose(load_model(translated.model)(images).numpy(), np.asarray(model(images)), atol=1e-5)
    assert sanity.tensors and all(t.passed for t in sanity.tensors)

    [file] = made.exported.files
    assert file.format == KERAS3 and (tmp_path / "handed" / file.file).is_file()
    assert len(file.sparsity) == len(sanity.tensors) and all(t.passed and t.sparsity >= 0.49 for t in file.sparsity)
    handed = keras3.load_keras3(tmp_path / "handed" / file.file)
    assert type(handed).__name__ == type(model).__name__ and [lyr.name for lyr in handed.layers] == [
        lyr.name for lyr in model.layers
    ]  # the baseline's own architecture
    np.testing.assert_allclose(np.asarray(handed(images)), made.pruned_model(images).numpy(), atol=1e-5)


def test_a_block_structure_holds_in_the_keras_3_file_handed_back(tiny_config, tiny_prepared, tmp_path):
    # The Sequential's hidden Dense layer (its first convolution and classifier left dense) pruned
    # in whole 4x4 blocks: the sanity check passes the structure, and the Keras 3 file holds it.
    layers = LayerSelection(keep_first_conv=True, keep_classifier=True, block_size=(4, 4))
    made = through_the_stages("sequential", tiny_config.model_copy(update={"layers": layers}), tiny_prepared, tmp_path)
    assert made.sanity.structure == "block 4x4"
    (hidden,) = made.sanity.tensors
    assert hidden.passed and hidden.structure_violations == 0
    [file] = made.exported.files
    handed = keras3.load_keras3(tmp_path / "handed" / file.file)
    kernel = np.asarray(handed.get_layer(hidden.layer).kernel)
    blocks = [kernel[r:r + 4, c:c + 4] for r in range(0, kernel.shape[0], 4) for c in range(0, kernel.shape[1], 4)]
    assert all((b == 0).all() or (b != 0).all() for b in blocks)  # the structure, read from the Keras 3 file
    assert abs(sum((b == 0).all() for b in blocks) / len(blocks) - 0.5) <= 0.01
