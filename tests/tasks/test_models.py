"""Model files: clear errors for unusable ones, a checked match with the data, honest evaluation."""

import json

import pytest

from tasks.config import DatasetConfig
from tasks.dataset import write_prepared
from tasks.errors import PruneflowError
from tasks.evaluate import evaluate_on_test
from tasks.models import check_compatible, load_model, outputs_probabilities
from tests.helpers import IMAGE_SIZE, SPLIT_SIZES, build_tiny_cnn


@pytest.fixture
def prepared(tiny_data, tmp_path):
    config = DatasetConfig(
        train_csv=tiny_data / "train.csv", val_csv=tiny_data / "val.csv", test_csv=tiny_data / "test.csv",
        image_height=IMAGE_SIZE, image_width=IMAGE_SIZE, channels=3, batch_size=8,
    )
    return write_prepared(config, tmp_path / "prepared"), config


def test_trained_baseline_is_evaluated_on_the_whole_test_split(tiny_baseline, prepared, tmp_path):
    dataset, config = prepared
    result = evaluate_on_test(tiny_baseline, dataset, config, tmp_path)
    assert result.examples == SPLIT_SIZES["test"]
    assert json.loads((tmp_path / "evaluation.json").read_text())["accuracy"] == result.accuracy
    assert result.accuracy >= 0.9  # the tiny task is easy: the baseline must have learnt it
    assert result.loss > 0


def test_input_shape_mismatch_is_refused(tiny_baseline, prepared):
    dataset, config = prepared
    wrong = config.model_copy(update={"image_height": 32})
    with pytest.raises(PruneflowError, match=r"expects input \(16, 16, 3\), but .* give \(32, 16, 3\)"):
        check_compatible(load_model(tiny_baseline), tiny_baseline, wrong, 2)


def test_output_count_mismatch_is_refused(tiny_baseline, prepared):
    _, config = prepared
    with pytest.raises(PruneflowError, match="has 2 outputs, but the train split has 3 classes"):
        check_compatible(load_model(tiny_baseline), tiny_baseline, config, 3)


def test_missing_and_unreadable_model_files(tmp_path):
    with pytest.raises(PruneflowError, match="model file not found"):
        load_model(tmp_path / "absent.h5")
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"definitely not HDF5")
    with pytest.raises(PruneflowError, match="junk.h5: cannot be loaded as a tf_keras model"):
        load_model(junk)


def test_softmax_output_is_detected_through_the_pruning_wrapper():
    from tasks.runtime import keras, tfmot

    model = build_tiny_cnn()
    assert outputs_probabilities(model)
    assert outputs_probabilities(tfmot.sparsity.keras.prune_low_magnitude(model))
    logits = keras.Sequential([keras.Input(shape=(3,)), keras.layers.Dense(2)])
    assert not outputs_probabilities(logits)


def test_a_lambda_layer_is_refused_unless_trusted(tmp_path):
    from tasks.models import save_model
    from tasks.runtime import keras

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
