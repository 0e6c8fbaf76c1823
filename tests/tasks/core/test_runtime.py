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


def test_runtime_sets_legacy_keras_in_a_fresh_interpreter_and_its_start_up_notices_stay_off_stderr():
    result = run_python(
        "import pruneflow.tasks.core.runtime as r, os; print(os.environ['TF_USE_LEGACY_KERAS'], r.tf.keras.Model.__module__);"
        "print(r.configure_devices())"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0].split() == ["1", "tf_keras.src.engine.training"]
    # TensorFlow's native notices (oneDNN, no CUDA driver, cuInit where there is no NVIDIA driver) are
    # not written; the device line says what was found.
    if result.stdout.splitlines()[1] == "CPU (no GPU visible to TensorFlow)" and not Path("/proc/driver/nvidia").exists():
        assert result.stderr == ""


def test_what_native_code_writes_to_stderr_is_kept_but_the_noise():
    from pruneflow.tasks.core.runtime import START_UP_NOISE

    code = (
        "import os, sys; from pruneflow.tasks.core.runtime import native_stderr_filtered, START_UP_NOISE\n"
        "with native_stderr_filtered(START_UP_NOISE):\n"
        "    os.write(2, b'I0000 port.cc:153] oneDNN custom operations are on.\\nE0000 a real failure\\n')\n"
        "    print('python too', file=sys.stderr)\n"
        "print('after', file=sys.stderr)"
    )
    result = run_python(code)
    assert result.returncode == 0 and START_UP_NOISE.search("oneDNN custom operations are on")
    assert result.stderr.splitlines() == ["E0000 a real failure", "python too", "after"]


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
