"""The one place TensorFlow is imported, with the legacy tf_keras that TFMOT requires.

TFMOT does not support Keras 3, and `tf.keras` resolves to Keras 3 unless TF_USE_LEGACY_KERAS
is set before tensorflow is first imported. Every module that needs TensorFlow, Keras or TFMOT
imports them from here.
"""

import os
import sys

if "tensorflow" in sys.modules and os.environ.get("TF_USE_LEGACY_KERAS") != "1":
    raise ImportError(
        "tensorflow was imported before pruneflow.tasks.core.runtime could set TF_USE_LEGACY_KERAS=1; "
        "import pruneflow.tasks.core.runtime first, or export TF_USE_LEGACY_KERAS=1"
    )
os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep oneDNN/CUDA start-up notices out of the logs

import contextlib
import re
import tempfile
import warnings
from collections.abc import Iterator

from pruneflow.tasks.core.imports import imports_without_gc

# What TensorFlow's native code writes to stderr as it loads, before it reads TF_CPP_MIN_LOG_LEVEL
# ("All log messages before absl::InitializeLog() is called are written to STDERR"), and as it
# looks for a GPU on a machine without an NVIDIA driver (cuInit failing there is no failure; with
# a driver, it is, and is shown): notices. The device line prune_train logs says what was found.
START_UP_NOISE = re.compile("|".join([
    r"All log messages before absl::InitializeLog", r"oneDNN custom operations are on", r"Could not find cuda drivers",
    r"Unable to register cu(DNN|FFT|BLAS) factory", r"computation placer already registered", r"TF-TRT Warning",
    r"This TensorFlow binary is optimized to use available CPU instructions", r"rebuild TensorFlow with the appropriate",
    *([] if os.path.exists("/proc/driver/nvidia") else [r"failed call to cuInit"]),
]))


@contextlib.contextmanager
def native_stderr_filtered(noise: re.Pattern) -> Iterator[None]:
    """Run the body with the process's stderr (file descriptor 2, where native code writes) going
    to a temporary file, then write back every line that is not `noise`."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as caught:
        os.dup2(caught.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            caught.seek(0)
            kept = [line for line in caught.read().decode(errors="replace").splitlines(True) if not noise.search(line)]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()


# In every process that imports it: a flow run's on a worker, a command's, a test's.
with imports_without_gc(), native_stderr_filtered(START_UP_NOISE), warnings.catch_warnings():
    # TFMOT's version check imports pkg_resources, which warns about this package when the
    # working directory is a checkout of it.
    warnings.filterwarnings("ignore", message="Module pruneflow was already imported", category=UserWarning)
    import tensorflow as tf
    import tensorflow_model_optimization as tfmot
    import tf_keras as keras

    # The wrapper class is not in TFMOT's public API; the sanity check needs it to find pruned layers.
    from tensorflow_model_optimization.python.core.sparsity.keras.pruning_wrapper import PruneLowMagnitude

    tf.config.list_physical_devices("GPU")  # CUDA is probed here, once, its notices filtered

__all__ = ["PruneLowMagnitude", "keras", "tf", "tfmot"]


def configure_devices() -> str:
    """Turn on memory growth for every visible GPU and describe what training will run on.

    Memory growth lets several processes (or a retry after an out-of-memory) share a GPU
    instead of the first one taking all of its memory. It must be set before a GPU is first
    used; when that has already happened, the setting in force is kept.
    """
    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return "CPU (no GPU visible to TensorFlow)"
    for gpu in gpus:
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:  # already initialised in this process
            pass
    names = ", ".join(
        tf.config.experimental.get_device_details(gpu).get("device_name", gpu.name) for gpu in gpus
    )
    return f"{len(gpus)} GPU(s), memory growth on: {names}"


def keras_3():
    """Keras 3, the `keras` package (what `import keras` gives users), for reading and writing the
    models they saved with it. Imported through here so that TensorFlow is first imported with
    TF_USE_LEGACY_KERAS=1, as TFMOT needs."""
    import keras

    return keras
