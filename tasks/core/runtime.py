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

from pruneflow.tasks.core.imports import imports_without_gc

# In every process that imports it: a flow run's on a worker, a command's, a test's.
with imports_without_gc():
    import tensorflow as tf
    import tensorflow_model_optimization as tfmot
    import tf_keras as keras

    # The wrapper class is not in TFMOT's public API; the sanity check needs it to find pruned layers.
    from tensorflow_model_optimization.python.core.sparsity.keras.pruning_wrapper import PruneLowMagnitude

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
