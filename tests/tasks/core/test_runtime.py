"""TensorFlow is imported once, with tf_keras: the Keras that TFMOT supports."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[3]


def run_python(code: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def test_keras_in_use_is_tf_keras():
    from pruneflow.tasks.core.runtime import keras, tf, tfmot

    assert keras.__name__ == "tf_keras"
    assert keras.__version__.startswith("2.")
    assert tf.keras.Model is keras.Model
    model = keras.Sequential([keras.Input(shape=(4,)), keras.layers.Dense(2)])
    wrapped = tfmot.sparsity.keras.prune_low_magnitude(model)
    assert type(wrapped.layers[0]).__name__ == "PruneLowMagnitude"


def test_runtime_sets_legacy_keras_in_a_fresh_interpreter():
    result = run_python(
        "import pruneflow.tasks.core.runtime as r, os; print(os.environ['TF_USE_LEGACY_KERAS'], r.tf.keras.Model.__module__)"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["1", "tf_keras.src.engine.training"]


def test_tensorflow_imported_first_without_legacy_keras_is_refused():
    result = run_python("import tensorflow, pruneflow.tasks.core.runtime")
    assert result.returncode != 0
    assert "tensorflow was imported before pruneflow.tasks.core.runtime" in result.stderr


def test_device_report_names_what_training_runs_on():
    from pruneflow.tasks.core.runtime import configure_devices, tf

    report = configure_devices()
    if tf.config.list_physical_devices("GPU"):
        assert "memory growth on" in report
    else:
        assert report == "CPU (no GPU visible to TensorFlow)"
