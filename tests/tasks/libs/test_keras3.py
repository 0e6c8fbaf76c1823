"""Keras 3 models translated into tf_keras and handed back: real Keras 3 files, real TensorFlow."""

import subprocess
import sys

import numpy as np
import pytest

from pruneflow.tasks.core.errors import MESSAGE_LIMIT, PruneflowError
from pruneflow.tasks.libs import keras3
from tests.helpers.keras3_models import (
    KERAS3_VARIANTS,
    add_unknown_option,
    build_keras3,
    images,
    save_keras3,
    shake_weights,
    someones_layer,
)


def _outputs(model, batch):
    return np.asarray(model(batch, training=False))


@pytest.mark.parametrize("name", sorted(keras3.SAME_ACTIVATIONS))
def test_each_activation_kept_by_name_computes_the_same_function_in_both(name):
    from pruneflow.tasks.core.runtime import keras as tf_keras
    from pruneflow.tasks.core.runtime import keras_3

    keras = keras_3()

    grid = np.linspace(-8, 8, 401, dtype="float32").reshape(1, -1)
    ours = np.asarray(keras.activations.get(name)(keras.ops.convert_to_tensor(grid)))
    theirs = np.asarray(tf_keras.activations.get(keras3.SAME_ACTIVATIONS[name])(tf_keras.backend.constant(grid)))
    np.testing.assert_allclose(theirs, ours, atol=1e-6)


@pytest.mark.parametrize("name", keras3.REBUILT_ACTIVATIONS)
def test_each_rebuilt_activation_computes_keras_3s_function(name):
    from pruneflow.tasks.core.runtime import keras as tf_keras
    from pruneflow.tasks.core.runtime import keras_3

    keras = keras_3()

    grid = np.linspace(-8, 8, 401, dtype="float32").reshape(1, -1)
    inputs = tf_keras.Input((401,))
    rebuilt = tf_keras.Model(inputs, keras3.RebuiltActivation(name, "act")(inputs))
    np.testing.assert_allclose(rebuilt(grid).numpy(), np.asarray(keras.activations.get(name)(grid)), atol=1e-6)
    if name == "hard_sigmoid":  # the namesake computes another function: it must not be what is used
        namesake = np.asarray(tf_keras.activations.hard_sigmoid(tf_keras.backend.constant(grid)))
        assert np.max(np.abs(namesake - rebuilt(grid).numpy())) > 0.05


@pytest.mark.parametrize(("kind", "suffix"), KERAS3_VARIANTS, ids=[f"{k}{s}" for k, s in KERAS3_VARIANTS])
def test_a_keras_3_file_is_recognised_translated_and_handed_back_with_the_same_outputs(tmp_path, kind, suffix):
    from pruneflow.tasks.core.runtime import keras as tf_keras

    model = build_keras3(kind, logits=True)
    shake_weights(model)
    path = save_keras3(model, tmp_path / f"model{suffix}")
    assert keras3.written_by_keras3(path)

    original = keras3.load_keras3(path)
    translated = keras3.translate(original, path)
    assert isinstance(translated, tf_keras.Model)
    batch = images(16)
    assert keras3.compare_outputs(original, translated, batch, path) <= keras3.OUTPUT_ATOL
    assert np.std(_outputs(original, batch)) > 0.01  # the outputs show differences, if there were any

    # Prune by hand: zero half of every Dense and Conv2D kernel, then hand the weights back.
    zeroed = {}
    for layer in (lyr for lyr in _walk(translated) if type(lyr).__name__ in ("Dense", "Conv2D")):
        kernel = layer.get_weights()
        kernel[0][..., : kernel[0].shape[-1] // 2] = 0
        layer.set_weights(kernel)
        zeroed[layer.name] = np.count_nonzero(kernel[0] == 0)
    handed = keras3.hand_back(translated, keras3.load_keras3(path))
    keras3.compare_outputs(handed, translated, batch, path, handing_back=True)
    back = tmp_path / "back.keras"
    back.write_bytes(keras3.archive_bytes(handed))
    found = {w.name.split("/")[-2]: w.zeros for w in keras3.weight_tensors(back) if w.name.endswith("/kernel")}
    assert {name: found[name] for name in zeroed} == zeroed


def _walk(model):
    for layer in model.layers:
        yield from _walk(layer) if hasattr(layer, "layers") else [layer]


def test_the_handed_back_file_loads_with_plain_keras_in_a_fresh_process(tmp_path):
    model = build_keras3("batchnorm_depthwise", logits=True)
    shake_weights(model)
    path = save_keras3(model, tmp_path / "model.keras")
    translated = keras3.translate(keras3.load_keras3(path), path)
    back = tmp_path / "back.keras"
    back.write_bytes(keras3.archive_bytes(keras3.hand_back(translated, keras3.load_keras3(path))))
    np.save(tmp_path / "images.npy", images(4))
    np.save(tmp_path / "expected.npy", _outputs(translated, images(4)))
    script = (
        "import sys, numpy as np, keras\n"
        "m = keras.saving.load_model(sys.argv[1])\n"
        "out = np.asarray(m(np.load(sys.argv[2])))\n"
        "print(float(np.max(np.abs(out - np.load(sys.argv[3])))))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(back), str(tmp_path / "images.npy"), str(tmp_path / "expected.npy")],
        capture_output=True, text=True, check=True,
    )
    assert float(done.stdout.strip().splitlines()[-1]) <= keras3.OUTPUT_ATOL


def test_a_keras_applications_backbone_translates_with_the_same_outputs(tmp_path):
    from pruneflow.tasks.core.runtime import keras_3

    keras = keras_3()

    model = keras.applications.MobileNetV3Small(
        input_shape=(32, 32, 3), weights=None, classes=3, classifier_activation=None, minimalistic=False
    )
    shake_weights(model, seed=3)
    path = save_keras3(model, tmp_path / "mobilenet_v3_small.keras")
    original = keras3.load_keras3(path)
    translated = keras3.translate(original, path)
    batch = images(4, size=32)
    scale = max(1.0, float(np.max(np.abs(_outputs(original, batch)))))  # logits of random weights run large
    assert keras3.compare_outputs(original, translated, batch, path) <= keras3.OUTPUT_ATOL * scale
    layer_classes = {type(layer).__name__ for layer in _walk(translated)}
    assert {"Rescaling", "Multiply", "ReLU", "DepthwiseConv2D"} <= layer_classes


def test_tf_keras_files_are_not_taken_for_keras_3(tiny_baseline, tmp_path):
    assert not keras3.written_by_keras3(tiny_baseline)
    assert not keras3.written_by_keras3(tmp_path / "missing.keras")


def test_a_keras_archive_named_h5_is_recognised_by_its_content(tmp_path):
    model = build_keras3("sequential")
    archive = save_keras3(model, tmp_path / "model.keras")
    renamed = archive.rename(tmp_path / "model.h5")
    assert keras3.written_by_keras3(renamed)
    loaded = keras3.load_keras3(renamed)
    np.testing.assert_array_equal(_outputs(loaded, images(2)), _outputs(model, images(2)))


def _refusal(path) -> str:
    with pytest.raises(PruneflowError) as caught:
        keras3.translate(keras3.load_keras3(path), path)
    message = str(caught.value)
    assert str(path) in message
    assert len(message) <= MESSAGE_LIMIT
    assert '"class_name"' not in message and "'class_name'" not in message  # no serialized config
    return message


def test_a_lambda_layer_is_refused_by_name(tmp_path):
    from pruneflow.tasks.core.runtime import keras_3

    keras = keras_3()

    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Lambda(lambda x: x * 2, name="doubling")(inputs)))
    message = _refusal(save_keras3(model, tmp_path / "lambda.keras"))
    assert "doubling (Lambda)" in message


def test_an_unregistered_custom_layer_is_refused_by_name(tmp_path):
    from pruneflow.tasks.core.runtime import keras_3

    keras = keras_3()
    inputs = keras.Input((4,))
    path = save_keras3(keras.Model(inputs, keras.layers.Dense(2)(someones_layer("twice")(inputs))), tmp_path / "custom.keras")
    message = _refusal(path)
    assert "twice (Twice)" in message


def test_a_truncated_archive_is_refused(tmp_path):
    path = save_keras3(build_keras3("sequential"), tmp_path / "model.keras")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    message = _refusal(path)
    assert "model architecture" in message or "cannot read" in message


def test_an_archive_whose_config_has_keys_this_keras_does_not_know_is_refused(tmp_path):
    model = build_keras3("sequential")
    path = save_keras3(model, tmp_path / "model.keras")
    add_unknown_option(path, model.layers[1].name, "future_option", 3)
    message = _refusal(path)
    assert f"{model.layers[1].name} (Conv2D): future_option" in message


def test_a_layer_tf_keras_does_not_have_is_refused_naming_the_layer_and_its_class(tmp_path):
    from pruneflow.tasks.core.runtime import keras_3

    keras = keras_3()

    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, activation="hard_tanh", name="clipped_conv")(inputs)
    path = save_keras3(keras.Model(inputs, x), tmp_path / "model.keras")
    message = _refusal(path)
    assert "clipped_conv (Conv2D)" in message and "hard_tanh" in message


def test_a_translation_that_differs_names_the_first_layer_that_does(tmp_path):
    model = build_keras3("sequential", logits=True)
    shake_weights(model)
    path = save_keras3(model, tmp_path / "model.keras")
    original = keras3.load_keras3(path)
    translated = keras3.translate(original, path)
    dense = translated.get_layer(original.layers[-1].name)
    kernel, bias = dense.get_weights()
    dense.set_weights([kernel, bias + 1.0])
    with pytest.raises(PruneflowError) as caught:
        keras3.compare_outputs(original, translated, images(8), path)
    assert f"the first layer whose outputs differ is {dense.name} (Dense)" in str(caught.value)


def test_a_layer_the_graph_calls_twice_stays_one_layer_with_its_weights_shared(tmp_path):
    from pruneflow.tasks.core.runtime import keras_3

    keras = keras_3()
    inputs = keras.Input((16, 16, 3))
    shared = keras.layers.Dense(3, activation="hard_silu", name="shared")
    x = shared(shared(inputs))
    model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Flatten()(x)))
    shake_weights(model)
    path = save_keras3(model, tmp_path / "shared.keras")
    original = keras3.load_keras3(path)
    translated = keras3.translate(original, path)
    assert [layer.name for layer in translated.layers].count("shared") == 1
    assert keras3.compare_outputs(original, translated, images(4), path) <= keras3.OUTPUT_ATOL
