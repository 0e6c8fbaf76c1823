"""Model files: clear errors for unusable ones, a checked match with the data, honest evaluation."""

import json

import pytest

from pruneflow.tasks.core.errors import PruneflowError
from pruneflow.tasks.libs.models import ModelFile, check_compatible, load_model, outputs_probabilities
from pruneflow.tasks.specs.config import ImageShape
from pruneflow.tasks.stages.evaluate import evaluate_on_test
from tests.helpers.data import IMAGE_SIZE, SPLIT_SIZES
from tests.helpers.models import build_tiny_cnn

SHAPE = ImageShape(height=IMAGE_SIZE, width=IMAGE_SIZE, channels=3)
SHAPE_TUPLE = (IMAGE_SIZE, IMAGE_SIZE, 3)


def test_every_model_shape_and_format_is_evaluated_on_the_whole_test_split(pruned_variant, tmp_path):
    for name, model in (("baseline", pruned_variant.baseline), ("pruned", pruned_variant.stripped.file)):
        (tmp_path / name).mkdir()
        result = evaluate_on_test(tmp_path / name, model, pruned_variant.dataset, batch_size=5)
        assert result.examples == SPLIT_SIZES["test"]
        assert json.loads((tmp_path / name / "evaluation.json").read_text())["accuracy"] == result.accuracy
        assert result.accuracy >= 0.9, name  # the tiny task is easy: both must have learnt it
        assert result.loss > 0


def test_input_shape_mismatch_is_refused(tiny_baseline):
    wrong = SHAPE.model_copy(update={"height": 32})
    with pytest.raises(PruneflowError, match=r"expects input \(16, 16, 3\), but .* give \(32, 16, 3\)"):
        check_compatible(load_model(tiny_baseline), tiny_baseline, wrong, 2)


def test_output_count_mismatch_is_refused(tiny_baseline):
    with pytest.raises(PruneflowError, match="has 2 outputs, but the train split has 3 classes"):
        check_compatible(load_model(tiny_baseline), tiny_baseline, SHAPE, 3)



@pytest.mark.parametrize("extra", ["input", "output"])
def test_a_model_with_two_inputs_or_two_outputs_is_refused(extra, tmp_path):
    """An image classifier takes one image tensor and gives one row of classes: a second input
    or output (a mask, an auxiliary head) has no data in the splits to feed or score it."""
    from pruneflow.tasks.core.runtime import keras

    image = keras.Input(SHAPE_TUPLE)
    features = keras.layers.Dense(2, activation="softmax")(keras.layers.Flatten()(image))
    if extra == "input":
        side = keras.Input((2,))
        model = keras.Model([image, side], keras.layers.Add()([features, side]))
    else:
        model = keras.Model(image, [features, keras.layers.Dense(2)(keras.layers.Flatten()(image))])
    with pytest.raises(PruneflowError, match=r"two\.h5: the model must have exactly one input and one output"):
        check_compatible(model, tmp_path / "two.h5", SHAPE, 2)
    single = keras.Model(image, features)
    check_compatible(single, tmp_path / "one.h5", SHAPE, 2)  # the same image model with one of each passes

def test_a_model_file_is_known_by_its_content(tiny_baseline, tmp_path):
    import shutil

    copy = shutil.copy(tiny_baseline, tmp_path / "copy.h5")
    assert ModelFile.of(copy).digest == ModelFile.of(tiny_baseline).digest
    (tmp_path / "copy.h5").write_bytes(b"other bytes")
    assert ModelFile.of(copy).digest != ModelFile.of(tiny_baseline).digest


def test_missing_and_unreadable_model_files(tmp_path):
    with pytest.raises(PruneflowError, match="model file not found"):
        load_model(tmp_path / "absent.h5")
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"definitely not HDF5")
    with pytest.raises(PruneflowError, match="junk.h5: cannot be loaded as a tf_keras model"):
        load_model(junk)


def test_softmax_output_is_detected_through_the_pruning_wrapper():
    from pruneflow.tasks.core.runtime import keras, tfmot

    model = build_tiny_cnn()
    assert outputs_probabilities(model)
    assert outputs_probabilities(tfmot.sparsity.keras.prune_low_magnitude(model))
    logits = keras.Sequential([keras.Input(shape=(3,)), keras.layers.Dense(2)])
    assert not outputs_probabilities(logits)


def test_a_lambda_layer_is_refused_unless_trusted(tmp_path):
    from pruneflow.tasks.core.runtime import keras
    from pruneflow.tasks.libs.models import save_model

    model = keras.Sequential(
        [keras.Input(shape=(4,)), keras.layers.Lambda(lambda x: x * 2, name="times_two"), keras.layers.Dense(2)]
    )
    path = save_model(model, tmp_path / "lambda.h5")
    with pytest.raises(PruneflowError, match=r"lambda.h5: loading this model would run code .*times_two \(Lambda\).*trust_custom_code"):
        load_model(path, trusted=False)
    assert load_model(path, trusted=True).layers[0].name == "times_two"


def test_a_model_of_plain_keras_layers_loads_untrusted(tiny_baseline):
    assert load_model(tiny_baseline, trusted=False).count_params() > 0


def test_a_file_without_an_architecture_is_refused(tmp_path):
    import h5py

    path = tmp_path / "weights-only.h5"
    with h5py.File(path, "w") as h5:
        h5.create_dataset("w", data=[1.0])
    with pytest.raises(PruneflowError, match="weights-only.h5: no Keras model architecture found"):
        load_model(path, trusted=False)
