"""Keras model files: load them with a clear error, check them against the data, evaluate them."""

from __future__ import annotations

import contextlib
import functools
import logging
import warnings
from pathlib import Path

from pruneflow.tasks.core.errors import PruneflowError, short_cause
from pruneflow.tasks.core.files import atomic_path, file_digest
from pruneflow.tasks.core.store import Content
from pruneflow.tasks.specs.config import ImageShape, QATSpec, TrainingSpec


class ModelFile(Content):
    """A model file a stage reads: keys use its content digest, never its path.

    Args:
        trust_code: load it even if that runs code that comes with it (see require_no_code).
    """

    path: Path
    trust_code: bool = False

    @classmethod
    def of(cls, path: Path, trust_code: bool = False) -> ModelFile:
        return cls(path=path, digest=file_digest(path), trust_code=trust_code)

    def load(self, **options):
        """The model, loaded as load_model does (refusing code unless trust_code)."""
        return load_model(self.path, trusted=self.trust_code, **options)


@functools.cache
def quantize_objects() -> dict[str, type]:
    """pruneflow's own QuantizeConfig classes by name, for TFMOT's quantize_scope:
    OutputOnlyQuantizeConfig, for a weightless layer TFMOT has no rule for (a Rescaling, as a Keras
    3 model's `x * 2.0` or hard_sigmoid is translated): its output quantized to int8 as an
    activation's is, its computation left as it is."""
    from pruneflow.tasks.core.runtime import tfmot

    quantization = tfmot.quantization.keras

    class OutputOnlyQuantizeConfig(quantization.QuantizeConfig):
        def get_weights_and_quantizers(self, layer):
            return []

        def get_activations_and_quantizers(self, layer):
            return []

        def set_quantize_weights(self, layer, quantize_weights):
            pass

        def set_quantize_activations(self, layer, quantize_activations):
            pass

        def get_output_quantizers(self, layer):
            # As TFMOT quantizes an activation layer's output: 8 bits, per tensor, asymmetric.
            return [quantization.quantizers.MovingAverageQuantizer(num_bits=8, per_axis=False, symmetric=False,
                                                                   narrow_range=False)]

        def get_config(self):
            return {}

    return {OutputOnlyQuantizeConfig.__name__: OutputOnlyQuantizeConfig}


def load_model(
    path: Path, *, pruning_wrappers: bool = False, quantization_wrappers: bool = False, compile: bool = False,
    trusted: bool = True,
):
    """Load a .h5 or .keras model, by default without compiling it.

    Args:
        trusted: False for a file from outside (the baseline): refuse it if loading it would
            run code (see require_no_code). Files pruneflow wrote itself are trusted.
        pruning_wrappers: load inside TFMOT's prune_scope, for models saved while wrapped.
        quantization_wrappers: load inside TFMOT's quantize_scope, for quantization-aware models.
        compile: restore the saved loss, metrics and optimizer state (to resume training).

    Raises:
        PruneflowError: the file is missing or is not a model tf_keras can read.
    """
    from pruneflow.tasks.core.runtime import keras, tfmot

    path = Path(path)
    if not path.is_file():
        raise PruneflowError(f"{path}: model file not found; check model.baseline in the config")
    if not trusted:
        require_no_code(path)
    scope = contextlib.ExitStack()
    if pruning_wrappers:
        scope.enter_context(tfmot.sparsity.keras.prune_scope())
    if quantization_wrappers:
        scope.enter_context(tfmot.quantization.keras.quantize_scope(quantize_objects()))
    try:
        with scope:
            return keras.models.load_model(path, compile=compile)
    except (OSError, ValueError, TypeError, KeyError) as error:
        raise PruneflowError(
            f"{path}: cannot be loaded as a tf_keras model ({short_cause(error)}). "
            "Save the model with tf_keras (TF_USE_LEGACY_KERAS=1) as .h5 or .keras."
        ) from None


def stored_config(path: Path) -> dict:
    """A model file's architecture, read as JSON without deserialising (so without running) it: from
    a `.keras` archive's config.json or an HDF5 file's model_config, told apart by content."""
    import json
    import zipfile

    import h5py

    try:
        with path.open("rb") as stream:
            archive = stream.read(4) == b"PK\x03\x04"
        if archive or zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                return json.loads(archive.read("config.json"))
        with h5py.File(path, "r") as h5:
            raw = h5.attrs["model_config"]
        return json.loads(raw.decode() if isinstance(raw, bytes) else raw)
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as error:
        raise PruneflowError(
            f"{path}: no Keras model architecture found in it ({short_cause(error)}); save the whole model "
            "(model.save) as .h5 or .keras"
        ) from None


def code_carrying_layers(config: dict) -> list[str]:
    """'name (Class)' of each layer whose loading would run code from the file or from outside
    tf_keras: Lambda layers (marshalled Python bytecode) and custom classes."""
    from pruneflow.tasks.core.runtime import keras

    found = []
    for layer in config.get("config", {}).get("layers", []):
        class_name = layer.get("class_name", "")
        name = layer.get("config", {}).get("name", "?")
        if class_name in ("Sequential", "Functional", "Model"):
            found += code_carrying_layers(layer)
        elif class_name == "Lambda" or not hasattr(keras.layers, class_name):
            found.append(f"{name} ({class_name})")
    return found


def require_no_code(path: Path) -> None:
    """Refuse a model file whose loading would run code that came with it.

    Raises:
        PruneflowError: naming the layers; model.trust_custom_code: true allows them.
    """
    config = stored_config(path)
    risky = code_carrying_layers(config)
    if config.get("class_name") not in ("Sequential", "Functional", "Model"):  # a subclassed model's own class
        risky.insert(0, f"{config.get('config', {}).get('name', '?')} ({config.get('class_name')})")
    if risky:
        raise PruneflowError(
            f"{path}: loading this model would run code that comes with it or from outside tf_keras: "
            f"{', '.join(risky)}. If you trust the file, set model.trust_custom_code: true in the config."
        )


def save_model(model, path: Path, *, include_optimizer: bool = False) -> Path:
    """Save atomically; the suffix (.h5 or .keras) picks the format."""
    tf_logger = logging.getLogger("tensorflow")
    level = tf_logger.level
    with atomic_path(path) as tmp, warnings.catch_warnings():
        # Noise for this tool: .h5 is what its users ship, and an uncompiled model (stripped,
        # or loaded with compile=False) is meant to be saved without compiled metrics.
        warnings.filterwarnings("ignore", message=".*HDF5 file.*legacy", category=UserWarning)
        tf_logger.setLevel(logging.ERROR)
        try:
            if tmp.suffix == ".keras":  # the native format always keeps the optimizer it has
                model.save(tmp)
            else:
                model.save(tmp, include_optimizer=include_optimizer)
        finally:
            tf_logger.setLevel(level)
    return Path(path)


def require_graph_model(model, path: Path) -> None:
    """Refuse a subclassed model: TFMOT prunes Sequential and functional models only, and only
    those know their input and output shapes before being called."""
    from pruneflow.tasks.core.runtime import keras

    if not (isinstance(model, keras.Sequential) or model._is_graph_network):
        raise PruneflowError(
            f"{path}: a subclassed model ({type(model).__name__}) cannot be pruned: TFMOT prunes "
            "Sequential and functional models only. Rebuild it with the functional API and load its weights."
        )


def check_compatible(model, path: Path, shape: ImageShape, n_classes: int) -> None:
    """Refuse a model whose input or output does not match the configured images and classes."""
    require_graph_model(model, path)
    if isinstance(model.input_shape, list) or isinstance(model.output_shape, list):
        raise PruneflowError(f"{path}: the model must have exactly one input and one output")
    expected = (shape.height, shape.width, shape.channels)
    if tuple(model.input_shape[1:]) != expected:
        raise PruneflowError(
            f"{path}: the model expects input {tuple(model.input_shape[1:])}, but the config's "
            f"dataset.image_height/image_width/channels give {expected}; make them agree"
        )
    if model.output_shape[-1] != n_classes:
        raise PruneflowError(
            f"{path}: the model has {model.output_shape[-1]} outputs, but the train split has "
            f"{n_classes} classes; the last layer needs one unit per class"
        )


def outputs_probabilities(model) -> bool:
    """True when the last layer ends in softmax, so the loss must not apply it again."""
    from pruneflow.tasks.core.runtime import keras

    last = model.layers[-1]
    if isinstance(last, keras.layers.Wrapper):  # e.g. a pruning wrapper: look at the layer inside
        last = last.layer
    if isinstance(last, keras.layers.Softmax):
        return True
    activation = getattr(last, "activation", None)
    return getattr(activation, "__name__", "") == "softmax"


def make_optimizer(training: TrainingSpec | QATSpec):
    """The configured optimizer at the configured learning rate."""
    from pruneflow.tasks.core.runtime import keras

    optimizers = {"adam": keras.optimizers.Adam, "sgd": keras.optimizers.SGD, "rmsprop": keras.optimizers.RMSprop}
    return optimizers[training.optimizer](learning_rate=training.learning_rate)


def compile_model(model, optimizer="adam", *, probabilities: bool | None = None) -> None:
    """Compile for integer labels, with the loss matched to the model's output (logits or not).

    Args:
        probabilities: whether the model outputs probabilities; read from its last layer if None.
    """
    from pruneflow.tasks.core.runtime import keras

    if probabilities is None:
        probabilities = outputs_probabilities(model)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=not probabilities)
    model.compile(optimizer=optimizer, loss=loss, metrics=["accuracy"])


def evaluate(model, data) -> tuple[float, float]:
    """(accuracy, loss) of a model on a batched dataset."""
    compile_model(model)
    loss, accuracy = model.evaluate(data, verbose=0)
    return float(accuracy), float(loss)
