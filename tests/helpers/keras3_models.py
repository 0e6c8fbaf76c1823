"""Keras 3 models as users build them today (`import keras`), in the shapes the translation to
tf_keras must handle, with weights that make every layer count."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tests.helpers.data import IMAGE_SIZE

# name -> which save formats it can be written in (Keras 3 cannot read back an .h5 file holding an
# operation on a number, such as `x * 0.5`: those models are saved as .keras only)
KERAS3_KINDS = {
    "sequential": (".keras", ".h5"),
    "functional_with_ops": (".keras",),
    "nested": (".keras", ".h5"),
    "batchnorm_depthwise": (".keras", ".h5"),
}
KERAS3_VARIANTS = [(kind, suffix) for kind, suffixes in KERAS3_KINDS.items() for suffix in suffixes]


def build_keras3(kind: str, n_classes: int = 2, size: int = IMAGE_SIZE, logits: bool = False):
    """A small Keras 3 model of one of KERAS3_KINDS; `logits`: no softmax at the end (outputs that
    show every difference)."""
    from pruneflow.tasks.core.runtime import keras_3

    keras = keras_3()

    layers = keras.layers
    head = None if logits else "softmax"
    shape = (size, size, 3)
    if kind == "sequential":
        return keras.Sequential([
            keras.Input(shape=shape), layers.Rescaling(2.0, offset=-1.0), layers.Conv2D(8, 3, activation="relu"),
            layers.MaxPooling2D(), layers.Flatten(), layers.Dense(16, activation="relu"),
            layers.Dense(n_classes, activation=head),
        ], name="k3_sequential")
    inputs = keras.Input(shape=shape)
    if kind == "functional_with_ops":
        x = layers.Conv2D(8, 3, padding="same", activation="hard_silu")(inputs * 2.0)
        gate = layers.Activation("hard_sigmoid")(layers.Conv2D(8, 1)(x))
        x = layers.Multiply()([x, gate]) - 0.25
        x = layers.Add()([x, layers.Conv2D(8, 1, activation="relu6")(x)])
        x = layers.Dense(16, activation="leaky_relu")(layers.GlobalAveragePooling2D()(x))
    elif kind == "nested":
        backbone = keras.Sequential([
            keras.Input(shape=shape), layers.Conv2D(8, 3, activation="relu"), layers.MaxPooling2D(),
        ], name="backbone")
        x = layers.Flatten()(backbone(layers.Rescaling(0.5)(inputs)))
        x = layers.Dense(16, activation="silu")(x)
    elif kind == "batchnorm_depthwise":
        x = layers.Rescaling(2.0, offset=-1.0)(inputs)
        x = layers.BatchNormalization()(layers.Conv2D(8, 3, padding="same", use_bias=False)(x))
        x = layers.Activation("hard_silu")(x)
        x = layers.DepthwiseConv2D(3, padding="same")(x)
        x = layers.ReLU(6.0)(layers.BatchNormalization()(x))
        x = layers.Dense(16, activation="gelu")(layers.GlobalAveragePooling2D()(x))
    else:
        raise ValueError(f"unknown Keras 3 model kind {kind!r}; one of {sorted(KERAS3_KINDS)}")
    return keras.Model(inputs, layers.Dense(n_classes, activation=head)(x), name=f"k3_{kind}")


def shake_weights(model, seed: int = 0) -> None:
    """Random weights everywhere, batch-norm statistics included, so that no layer is an identity."""
    rng = np.random.default_rng(seed)
    for weight in model.weights:
        shape = tuple(weight.shape)
        if "variance" in weight.name:
            weight.assign(rng.uniform(0.5, 2.0, shape).astype("float32"))
        else:
            weight.assign(rng.normal(0, 0.3, shape).astype("float32"))


def save_keras3(model, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    model.save(path)
    return path


def images(count: int = 8, size: int = IMAGE_SIZE, seed: int = 1) -> np.ndarray:
    """Pixel values in [0, 1], as the prepared dataset gives them."""
    return np.random.default_rng(seed).uniform(0, 1, (count, size, size, 3)).astype("float32")


def someones_layer(name: str):
    """A layer of a class that someone's code registered with Keras (package "someone"): loading a
    model that holds it would run that code."""
    from pruneflow.tasks.core.runtime import keras_3

    keras = keras_3()

    @keras.saving.register_keras_serializable(package="someone")
    class Twice(keras.layers.Layer):
        def call(self, x):
            return x * 2

    return Twice(name=name)


def add_unknown_option(path: Path, layer: str, key: str, value) -> None:
    """Write an option this Keras does not know into layer `layer` of a `.keras` archive's config,
    as a newer Keras (or a hand edit) would."""
    import json
    import zipfile

    with zipfile.ZipFile(path) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    config = json.loads(members["config.json"])
    [entry] = [entry for entry in config["config"]["layers"] if entry["config"]["name"] == layer]
    entry["config"][key] = value
    members["config.json"] = json.dumps(config).encode()
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
