"""The pruning recipe as a plain script, the way the tutorial does it by hand: no pruneflow, no Prefect.

    .venv/bin/python bench/plain_tfmot.py CONFIG.yaml OUT_DIR

Reads the same run config as `pruneflow run` (its CSVs, baseline, schedule, training), and
does what a notebook does: load the three splits, evaluate the baseline, wrap it with
prune_low_magnitude under the schedule, fine-tune with UpdatePruningStep and
PruningSummaries, strip the wrappers, save the pruned .h5, zip both models, evaluate the
pruned one. The tutorial's two mistakes are not copied (the test split is neither augmented
nor shuffled; labels are encoded once, from the training split). Prints one JSON line: wall
time per step, accuracies, sizes. bench/bench_overhead.py times it against pruneflow.
"""

from __future__ import annotations

import json
import os
import sys
import time
import zipfile
from pathlib import Path

STARTED = time.perf_counter()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")  # TFMOT needs Keras 2 (tf_keras)

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import tensorflow as tf  # noqa: E402
import tensorflow_model_optimization as tfmot  # noqa: E402
import tf_keras as keras  # noqa: E402
import yaml  # noqa: E402

IMPORTED = time.perf_counter()


def zipped_size(path: Path) -> int:
    archive = path.with_suffix(".zip")
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.write(path, arcname=path.name)
    return archive.stat().st_size


def main() -> int:
    config_path, out = Path(sys.argv[1]).resolve(), Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    config = yaml.safe_load(config_path.read_text())
    base = config_path.parent
    data, training, pruning = config["dataset"], config["training"], config["pruning"]
    height, width, channels = data["image_height"], data["image_width"], data["channels"]
    batch = data.get("batch_size", 32)
    times = {"imports": IMPORTED - STARTED}

    def timed(name, started):
        times[name] = time.perf_counter() - started

    # Data: the three CSVs, labels encoded once from the training split.
    started = time.perf_counter()
    frames = {split: pd.read_csv(base / data[f"{split}_csv"]) for split in ("train", "val", "test")}
    classes = sorted(frames["train"]["label"].astype(str).unique())

    def split(name: str, shuffle: bool):
        frame, folder = frames[name], (base / data[f"{name}_csv"]).parent
        paths = [str(folder / f) for f in frame["filename"]]
        labels = [classes.index(str(label)) for label in frame["label"]]

        def load(path, label):
            image = tf.io.decode_image(tf.io.read_file(path), channels=channels, expand_animations=False)
            image = tf.image.resize(image, (height, width)) / 255.0
            return image, label

        ds = tf.data.Dataset.from_tensor_slices((paths, labels))
        if shuffle:
            ds = ds.shuffle(len(paths), seed=data.get("shuffle_seed", 42))
        return ds.map(load, num_parallel_calls=tf.data.AUTOTUNE).batch(batch).cache().prefetch(tf.data.AUTOTUNE)

    train, val, test = split("train", True), split("val", False), split("test", False)
    timed("data", started)

    started = time.perf_counter()
    keras.utils.set_random_seed(config.get("seed", 42))
    baseline_path = base / config["model"]["baseline"]
    baseline = keras.models.load_model(baseline_path)
    if baseline.optimizer is None:  # saved without its compilation
        baseline.compile(loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    _, baseline_accuracy = baseline.evaluate(test, verbose=0)
    timed("baseline", started)

    started = time.perf_counter()
    steps = int(np.ceil(len(frames["train"]) / batch))
    if pruning["kind"] == "polynomial_decay":
        schedule = tfmot.sparsity.keras.PolynomialDecay(
            initial_sparsity=pruning["initial_sparsity"], final_sparsity=pruning["final_sparsity"],
            begin_step=pruning.get("begin_step", 0), end_step=pruning.get("end_step") or steps * training["epochs"],
            power=pruning.get("power", 3), frequency=pruning.get("frequency", 100),
        )
    else:
        schedule = tfmot.sparsity.keras.ConstantSparsity(
            pruning["target_sparsity"], begin_step=pruning.get("begin_step", 0), frequency=pruning.get("frequency", 100)
        )
    wrapped = tfmot.sparsity.keras.prune_low_magnitude(baseline, pruning_schedule=schedule)
    loss = baseline.loss or "sparse_categorical_crossentropy"  # as the baseline was trained
    wrapped.compile(
        optimizer=keras.optimizers.Adam(learning_rate=training.get("learning_rate", 1e-3)), loss=loss,
        metrics=["accuracy"],
    )
    wrapped.fit(
        train, validation_data=val, epochs=training["epochs"], verbose=0,
        callbacks=[tfmot.sparsity.keras.UpdatePruningStep(), tfmot.sparsity.keras.PruningSummaries(log_dir=str(out / "logs"))],
    )
    timed("prune_train", started)

    started = time.perf_counter()
    stripped = tfmot.sparsity.keras.strip_pruning(wrapped)
    pruned_path = out / "pruned.h5"
    keras.models.save_model(stripped, pruned_path, include_optimizer=False)
    timed("strip", started)

    started = time.perf_counter()
    stripped.compile(loss=loss, metrics=["accuracy"])
    _, pruned_accuracy = stripped.evaluate(test, verbose=0)
    timed("evaluate_pruned", started)

    started = time.perf_counter()
    sizes = {"baseline_zip": zipped_size(_copy(baseline_path, out)), "pruned_zip": zipped_size(pruned_path)}
    timed("measure_size", started)
    times["total"] = time.perf_counter() - STARTED
    print(json.dumps({"seconds": times, "baseline_accuracy": baseline_accuracy, "pruned_accuracy": pruned_accuracy,
                      **sizes}))
    return 0


def _copy(path: Path, out: Path) -> Path:
    """The baseline next to the outputs, so that its zip is written there and not beside the user's file."""
    target = out / f"baseline{path.suffix}"
    target.write_bytes(path.read_bytes())
    return target


if __name__ == "__main__":
    sys.exit(main())
