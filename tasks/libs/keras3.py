"""Keras 3 model files: recognise them, load them safely, translate them into tf_keras (which TFMOT
prunes) and hand the pruned weights back to the baseline's own Keras 3 architecture.

tf_keras cannot read what Keras 3 writes, and TFMOT prunes only tf_keras models. The translation
rebuilds the Keras 3 model's graph from its config, layer by layer, with tf_keras layers that
compute the same function, and copies the weights by name. What the two libraries define
differently is rebuilt from tf_keras layers, never mapped to a near namesake: Keras 3's
hard_sigmoid is relu6(x + 3) / 6 (tf_keras's is clip(0.2 x + 0.5)), and tf_keras has no
hard_silu, relu6 or leaky_relu activation. The result is checked on images: both models'
outputs within OUTPUT_ATOL, or the first layer whose outputs differ is named.

Every layer of the translation keeps its Keras 3 name (helper layers get the name with a suffix),
so the layer plan's paths, the hand-back and the diagnosis can pair layers by name.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from pruneflow.tasks.core.errors import PruneflowError, short_cause
from pruneflow.tasks.libs.models import stored_config

OUTPUT_ATOL = 1e-5  # both models' outputs agree within this on the check's images (see `within`)
CHECK_IMAGES = 32  # training images (the calibration draw's) on which a translation and a hand-back are checked

ZIP_MAGIC = b"PK\x03\x04"
HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"

# Activations (by Keras 3 name) that tf_keras computes identically, under their tf_keras name.
# tests/tasks/libs/test_keras3.py evaluates each pair on a grid of values.
SAME_ACTIVATIONS = {
    "linear": "linear", "relu": "relu", "sigmoid": "sigmoid", "softmax": "softmax", "tanh": "tanh",
    "elu": "elu", "selu": "selu", "softplus": "softplus", "softsign": "softsign", "exponential": "exponential",
    "gelu": "gelu", "mish": "mish", "silu": "swish", "swish": "swish",
}
# Activations rebuilt from tf_keras layers (see RebuiltActivation).
REBUILT_ACTIVATIONS = ("hard_sigmoid", "hard_silu", "hard_swish", "relu6", "leaky_relu")

# Keras 3 element-wise operations (keras.ops.numpy, as in `x + 3.0` on a Keras tensor).
_OPS = {"Add": "Add", "Subtract": "Subtract", "Multiply": "Multiply", "Divide": None, "TrueDivide": None}
_MODELS = ("Functional", "Sequential", "Model")


# --- recognising a file ------------------------------------------------------------------------

def saved_keras_version(path: Path) -> str | None:
    """The Keras version that wrote a model file, read from its content (not its suffix): the
    `.keras` archive's metadata.json, or the HDF5 file's `keras_version` attribute. None when the
    file says nothing (an HDF5 file written by tf_keras before 2.x recorded it, or not a model)."""
    path = Path(path)
    try:
        with path.open("rb") as stream:
            magic = stream.read(8)
        if magic.startswith(ZIP_MAGIC):
            with zipfile.ZipFile(path) as archive:
                return json.loads(archive.read("metadata.json")).get("keras_version")
        if magic.startswith(HDF5_MAGIC):
            import h5py

            with h5py.File(path, "r") as h5:
                version = h5.attrs.get("keras_version")
            return version.decode() if isinstance(version, bytes) else version
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return None
    return None


def written_by_keras3(path: Path) -> bool:
    """Whether Keras 3 (or later) wrote this model file, by its content."""
    version = saved_keras_version(path)
    try:
        return version is not None and int(str(version).split(".")[0]) >= 3
    except ValueError:
        return False


# --- loading -----------------------------------------------------------------------------------

def code_carrying_layers3(config: dict, prefix: str = "") -> list[str]:
    """'path (Class)' of each layer in a Keras 3 config whose loading would run code from the file
    or from outside Keras: Lambda layers, and classes that are not Keras's own (a `.keras` archive
    names each class's module; an `.h5` file only its class)."""
    from pruneflow.tasks.core.runtime import keras_3

    keras = keras_3()
    found = []
    for layer in config.get("config", {}).get("layers", []):
        class_name, name = layer.get("class_name", ""), layer.get("config", {}).get("name", layer.get("name", "?"))
        module = layer.get("module")
        own = module.startswith("keras") if module else hasattr(keras.layers, class_name) or class_name in _MODELS
        if layer.get("registered_name") not in (None, class_name):
            own = False  # registered by someone's code: "package>Class"
        if class_name in _MODELS and own:
            found += code_carrying_layers3(layer, f"{prefix}{name}/")
        elif class_name == "Lambda" or not own:
            found.append(f"{prefix}{name} ({class_name})")
    return found


def load_keras3(path: Path):
    """Load a Keras 3 model file with Keras 3 in safe mode, uncompiled.

    Raises:
        PruneflowError: a Lambda layer or a class that is not Keras's own (named); a file Keras 3
            cannot read (its error's class and first line).
    """
    from pruneflow.tasks.core.runtime import keras_3

    keras = keras_3()
    path = Path(path)
    config = stored_config(path)  # read as JSON: nothing deserialised or run
    if config.get("class_name") not in _MODELS:
        raise PruneflowError(
            f"{path}: a subclassed Keras 3 model ({config.get('class_name')}) cannot be pruned: only Sequential and "
            "functional models can be rebuilt in tf_keras. Rebuild it with the functional API and load its weights."
        )
    risky = code_carrying_layers3(config)
    if risky:
        raise PruneflowError(
            f"{path}: layers whose loading would run code from the file or from outside Keras, which cannot be "
            f"rebuilt in tf_keras: {', '.join(risky)}. Replace them with Keras's own layers."
        )
    with _suffixed(path) as readable:
        try:
            return keras.saving.load_model(readable, compile=False, safe_mode=True)
        except Exception as error:  # noqa: BLE001 (Keras raises any class for a file it cannot read)
            unknown = unknown_options(config, keras)
            cause = f"options this Keras ({keras.__version__}) does not know: {', '.join(unknown)}" if unknown else (
                short_cause(error))
            raise PruneflowError(
                f"{path}: Keras 3 cannot read this model file ({cause}). Check that it was saved whole "
                f"(model.save) by the Keras version installed here or an older one (it was written by Keras "
                f"{saved_keras_version(path) or 'of an unknown version'})."
            ) from None


def unknown_options(config: dict, keras, prefix: str = "") -> list[str]:
    """'path (Class): option' for each option in a Keras 3 config that its Keras layer class does not
    take (a file written by a newer Keras, or edited): what to tell a user whose file Keras refused."""
    found = []
    for layer in config.get("config", {}).get("layers", []):
        class_name, options = layer.get("class_name", ""), layer.get("config", {})
        name = options.get("name", layer.get("name", "?"))
        if class_name in _MODELS:
            found += unknown_options(layer, keras, f"{prefix}{name}/")
            continue
        cls = getattr(keras.layers, class_name, None)
        if not isinstance(cls, type):
            continue
        accepted = _accepted_options(cls) | {"trainable", "dtype", "name", "autocast", "input_dim", "batch_shape"}
        found += [f"{prefix}{name} ({class_name}): {key}" for key in options if key not in accepted]
    return found


@contextlib.contextmanager
def _suffixed(path: Path) -> Iterator[Path]:
    """The file under a name whose suffix Keras 3 reads its content by (it picks its reader by the
    suffix): itself, or a symbolic link in a temporary folder."""
    with path.open("rb") as stream:
        is_zip = stream.read(4) == ZIP_MAGIC
    if path.suffix in ((".keras",) if is_zip else (".h5", ".hdf5")):
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="pruneflow-keras3-") as folder:
        link = Path(folder) / ("model.keras" if is_zip else "model.h5")
        link.symlink_to(path.resolve())
        yield link


# --- translating -------------------------------------------------------------------------------

def translate(model3, where: Path | str = "the baseline"):
    """The tf_keras model that computes what the Keras 3 model computes, with its weights.

    Raises:
        PruneflowError: naming the first layer (path and class) that cannot be rebuilt in tf_keras.
    """
    from pruneflow.tasks.core.runtime import keras

    if type(model3).__name__ not in _MODELS:
        raise PruneflowError(
            f"{where}: a subclassed Keras 3 model ({type(model3).__name__}) cannot be rebuilt in tf_keras; "
            "rebuild it with the functional API"
        )
    keras.backend.clear_session()
    return _Translator(where).model(model3, model3.get_config(), prefix="")


class _Translator:
    def __init__(self, where):
        self.where = where
        # path -> the tf_keras layer (or model) rebuilt for it, and what follows it: a layer that
        # the Keras 3 graph calls several times is one layer, its weights shared, here too
        self.built: dict[str, tuple] = {}
        self.operations: dict[int, dict] = {}  # id of a Keras 3 model -> its layers and operations by name

    def _named(self, model3, name: str):
        """The layer or operation of this name in a Keras 3 model (its config does not always say
        which: an `.h5` file records the operation `x + y` as class Add, like the layer)."""
        if id(model3) not in self.operations:
            found = model3.operations if hasattr(model3, "operations") else model3.layers
            self.operations[id(model3)] = {operation.name: operation for operation in found}
        return self.operations[id(model3)].get(name) or model3.get_layer(name)

    def refuse(self, path: str, class_name: str, why: str) -> PruneflowError:
        return PruneflowError(
            f"{self.where}: layer {path} ({class_name}) cannot be rebuilt in tf_keras: {why}. "
            "Replace it with a layer both Keras versions have, or prune a tf_keras model."
        )

    def model(self, model3, config: dict, prefix: str):
        """Rebuild one (possibly nested) Keras 3 model as a tf_keras functional model."""
        from pruneflow.tasks.core.runtime import keras

        layers = config["layers"]
        tensors: dict[tuple[str, int], list] = {}  # (layer name, node index) -> its output tensors
        if type(model3).__name__ == "Sequential":
            inputs, outputs = self._sequential(model3, config, layers, prefix)
        else:
            for entry in layers:
                self._functional_layer(model3, entry, tensors, prefix)
            inputs = [self._history(ref, tensors) for ref in _refs(config["input_layers"])]
            outputs = [self._history(ref, tensors) for ref in _refs(config["output_layers"])]
            inputs = inputs[0] if len(inputs) == 1 and not _is_list_of_refs(config["input_layers"]) else inputs
            outputs = outputs[0] if len(outputs) == 1 and not _is_list_of_refs(config["output_layers"]) else outputs
        return keras.Model(inputs, outputs, name=config.get("name", model3.name))

    def _sequential(self, model3, config, layers, prefix):
        from pruneflow.tasks.core.runtime import keras

        entries = list(layers)
        if entries and entries[0]["class_name"] == "InputLayer":
            inputs = self._input(entries.pop(0)["config"])
        elif config.get("build_input_shape"):
            inputs = keras.Input(batch_shape=tuple(config["build_input_shape"]), name=f"{config['name']}_input")
        else:
            raise self.refuse(prefix + config.get("name", "?"), "Sequential", "the model was never built, so its "
                              "input shape is unknown")
        x = inputs
        for entry in entries:
            x = self._call(model3, entry, [x], {}, prefix)
        return inputs, x

    def _input(self, config: dict):
        from pruneflow.tasks.core.runtime import keras

        shape = config.get("batch_shape") or config.get("batch_input_shape")
        return keras.Input(batch_shape=tuple(shape), dtype=_dtype(config.get("dtype")), name=config["name"])

    def _functional_layer(self, model3, entry: dict, tensors: dict, prefix: str) -> None:
        name = entry.get("name") or entry["config"]["name"]
        if entry["class_name"] == "InputLayer":
            tensors[(name, 0)] = [self._input(entry["config"])]
            return
        for index, node in enumerate(entry.get("inbound_nodes", [])):
            args = self._resolve(node.get("args", []), tensors)
            kwargs = self._resolve(node.get("kwargs", {}), tensors)
            out = self._call(model3, entry, args, kwargs, prefix)
            tensors[(name, index)] = list(out) if isinstance(out, (list, tuple)) else [out]

    def _resolve(self, value, tensors):
        if isinstance(value, dict) and value.get("class_name") == "__keras_tensor__":
            return self._history(value["config"]["keras_history"], tensors)
        if isinstance(value, dict):
            return {key: self._resolve(item, tensors) for key, item in value.items()}
        if isinstance(value, (list, tuple)):
            return [self._resolve(item, tensors) for item in value]
        return value

    @staticmethod
    def _history(ref, tensors):
        name, node, index = ref[0], ref[1], ref[2]
        return tensors[(name, node)][index]

    def _call(self, model3, entry: dict, args: list, kwargs: dict, prefix: str):
        """Rebuild one layer (or operation, or nested model) and call it on the translated inputs."""
        from pruneflow.tasks.core.runtime import keras_3

        keras3 = keras_3()
        class_name, config = entry["class_name"], entry.get("config", {})
        name = entry.get("name") or config.get("name")
        path = prefix + name
        layer3 = self._named(model3, name)
        if not isinstance(layer3, keras3.layers.Layer):  # an operation on tensors, as `x + 3.0` records
            return self._operation(path, class_name, name, args)
        if class_name in _MODELS:
            if path not in self.built:
                self.built[path] = (self.model(layer3, config, prefix=f"{path}/"), None)
            return self.built[path][0](*args, **_call_kwargs(kwargs))
        first_call = path not in self.built
        if first_call:
            self.built[path] = self._layer(path, class_name, config)
        layer, after = self.built[path]
        if layer is None:
            x = args[0]
        else:
            x = layer(args[0] if len(args) == 1 else list(args), **_call_kwargs(kwargs))
            if first_call:
                _copy_weights(layer3, layer, lambda why: self.refuse(path, class_name, why))
        return after(x) if after is not None else x

    def _operation(self, path: str, class_name: str, name: str, args: list):
        from pruneflow.tasks.core.runtime import keras

        if class_name not in _OPS or len(args) != 2:
            raise self.refuse(path, class_name, "this Keras operation has no tf_keras layer")
        a, b = args
        tensors = [arg for arg in args if not isinstance(arg, (int, float))]
        if len(tensors) == 2:
            if _OPS[class_name] is None:
                raise self.refuse(path, class_name, "dividing one tensor by another has no tf_keras layer")
            return getattr(keras.layers, _OPS[class_name])(name=name)([a, b])
        if len(tensors) != 1:
            raise self.refuse(path, class_name, "only a tensor and a number, or two tensors, can be rebuilt")
        x, c = (a, float(b)) if tensors[0] is a else (b, float(a))
        if class_name == "Add":
            scale, offset = 1.0, c
        elif class_name == "Multiply":
            scale, offset = c, 0.0
        elif class_name == "Subtract":  # x - c, or c - x
            scale, offset = (1.0, -c) if tensors[0] is a else (-1.0, c)
        else:
            if tensors[0] is not a:
                raise self.refuse(path, class_name, "dividing a number by a tensor has no tf_keras layer")
            scale, offset = 1.0 / c, 0.0
        return keras.layers.Rescaling(scale, offset, name=name)(x)

    def _layer(self, path: str, class_name: str, config: dict):
        """(the tf_keras layer or None, what to apply after it or None): the layer keeps its name;
        an activation tf_keras lacks becomes helper layers after it (instead of it, for an
        Activation layer)."""
        from pruneflow.tasks.core.runtime import keras

        cls = getattr(keras.layers, class_name, None)
        if cls is None or not isinstance(cls, type) or not issubclass(cls, keras.layers.Layer):
            raise self.refuse(path, class_name, "tf_keras has no layer of this class")
        config = _plain(dict(config))
        config["dtype"] = _dtype(config.get("dtype"))
        for key in [key for key in config if key.endswith("_initializer")]:
            del config[key]  # the weights are copied: tf_keras's default initializers never run
        after = None
        activation = config.get("activation")
        if activation is not None:
            if not isinstance(activation, str):
                raise self.refuse(path, class_name, f"its activation {_name_of(activation)} is not one of Keras's own")
            if activation in REBUILT_ACTIVATIONS:
                name = config["name"]
                if class_name == "Activation":  # the helper layers replace it
                    return None, RebuiltActivation(activation, name)
                config["activation"] = "linear"
                after = RebuiltActivation(activation, f"{name}_{activation}")
            elif activation in SAME_ACTIVATIONS:
                config["activation"] = SAME_ACTIVATIONS[activation]
            else:
                raise self.refuse(path, class_name, f"tf_keras has no activation that computes Keras 3's {activation!r}")
        accepted = _accepted_options(cls)
        for key in list(config):
            if key in accepted:
                continue
            if config[key] in (None, False):  # an option Keras 3 added, switched off
                del config[key]
            else:
                raise self.refuse(path, class_name, f"option {key}={config[key]!r} has no tf_keras counterpart")
        try:
            return cls.from_config(config), after
        except (TypeError, ValueError) as error:
            raise self.refuse(path, class_name, short_cause(error)) from None


class RebuiltActivation:
    """Keras 3's activation `name`, from tf_keras layers made once (the last one named layer_name),
    applied to any number of tensors."""

    def __init__(self, name: str, layer_name: str):
        from pruneflow.tasks.core.runtime import keras

        layers = keras.layers
        self.name = name
        if name == "relu6":
            self.last = layers.ReLU(max_value=6.0, name=layer_name)
        elif name == "leaky_relu":  # Keras 3's default negative slope
            self.last = layers.LeakyReLU(alpha=0.2, name=layer_name)
        else:  # hard_sigmoid(x) = relu6(x + 3) / 6 = min(max(x / 6 + 0.5, 0), 1); hard_silu(x) = x * hard_sigmoid(x)
            gate = layer_name if name == "hard_sigmoid" else f"{layer_name}_hard_sigmoid"
            self.scale = layers.Rescaling(1.0 / 6.0, 0.5, name=f"{gate}_scale")
            self.gate = layers.ReLU(max_value=1.0, name=gate)
            self.last = self.gate if name == "hard_sigmoid" else layers.Multiply(name=layer_name)

    def __call__(self, x):
        if self.name in ("relu6", "leaky_relu"):
            return self.last(x)
        gate = self.gate(self.scale(x))
        return gate if self.name == "hard_sigmoid" else self.last([x, gate])


def _copy_weights(source, target, refuse) -> None:
    """Copy a layer's weights into the same layer of the other Keras. Both build a layer's weights
    in the same order (their names differ: DepthwiseConv2D's `kernel` is tf_keras's
    `depthwise_kernel`), so they pair by position, each pair checked for shape; the outputs'
    comparison checks the rest."""
    if len(source.weights) != len(target.weights):
        raise refuse(f"it has {len(source.weights)} weights in one Keras and {len(target.weights)} in the other")
    values = []
    for mine, theirs in zip(source.weights, target.weights):
        if tuple(mine.shape) != tuple(theirs.shape):
            raise refuse(f"its weight {_weight_name(mine)!r} is {tuple(mine.shape)} in one Keras and "
                         f"{tuple(theirs.shape)} in the other")
        values.append(np.asarray(mine.numpy()))
    if values:
        target.set_weights(values)


def _weight_name(weight) -> str:
    return weight.name.split("/")[-1].split(":")[0]


@functools.cache
def _accepted_options(cls) -> frozenset[str]:
    """The keyword arguments a layer class takes: its and its bases' __init__ parameters, and the
    ones the base Layer takes through **kwargs."""
    options = set()
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is not None:
            options |= {name for name in inspect.signature(init).parameters if name not in ("self", "kwargs")}
    return frozenset(options | {"name", "dtype", "trainable", "dynamic", "input_dim", "input_shape",
                                "batch_input_shape", "batch_size", "weights", "activity_regularizer", "autocast"})


def _dtype(dtype):
    """Keras 3 writes a dtype as a DTypePolicy dict; tf_keras takes the policy's name."""
    if isinstance(dtype, dict):
        return dtype.get("config", {}).get("name", "float32")
    return dtype


def _plain(value):
    """A Keras 3 serialized object ({module, class_name, config, registered_name}) as tf_keras
    reads it ({class_name, config}), at any depth; a dtype policy as its name."""
    if isinstance(value, dict):
        if value.get("class_name") == "DTypePolicy":
            return _dtype(value)
        if "class_name" in value and "config" in value:
            return {"class_name": value["class_name"], "config": _plain(value["config"])}
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return value


def _name_of(value) -> str:
    return value.get("class_name", str(value)) if isinstance(value, dict) else str(value)


def _call_kwargs(kwargs: dict) -> dict:
    """The call arguments tf_keras layers take (Keras 3 records a mask and the training flag)."""
    return {key: value for key, value in kwargs.items() if key in ("training", "mask")}


def _refs(value) -> list:
    """A functional config's input_layers/output_layers as a list of [name, node, index]."""
    return [value] if _is_ref(value) else list(value)


def _is_ref(value) -> bool:
    return isinstance(value, list) and len(value) == 3 and isinstance(value[0], str)


def _is_list_of_refs(value) -> bool:
    return not _is_ref(value)


# --- checking and handing back -----------------------------------------------------------------

def within(reference: np.ndarray, other: np.ndarray, atol: float) -> bool:
    """Whether two outputs agree within atol, scaled by the reference's largest magnitude when that
    is over 1 (float32 logits of magnitude 100 carry rounding differences of about 1e-5)."""
    if reference.shape != other.shape:
        return False
    scale = max(1.0, float(np.max(np.abs(reference)))) if reference.size else 1.0
    return bool(np.max(np.abs(reference - other), initial=0.0) <= atol * scale)


def compare_outputs(
    model3, model2, images: np.ndarray, where: Path | str, atol: float = OUTPUT_ATOL, handing_back: bool = False
) -> float:
    """The largest difference between a Keras 3 model's and a tf_keras model's outputs on `images`.

    Args:
        handing_back: the Keras 3 model was made from the tf_keras one (hand_back), not the other way.

    Raises:
        PruneflowError: a difference over atol (see `within`), naming the first layer whose outputs differ.
    """
    out3 = np.asarray(model3(images, training=False))
    out2 = np.asarray(model2(images, training=False))
    difference = float(np.max(np.abs(out3 - out2), initial=0.0))
    if not within(out3, out2, atol):
        first = first_differing_layer(model3, model2, images, atol)
        made = ("the Keras 3 model handed back from the pruned tf_keras model" if handing_back
                else "the tf_keras translation of the Keras 3 model")
        raise PruneflowError(
            f"{where}: {made} gives different outputs (largest difference {difference:.3g}, over {atol:g}); the "
            f"first layer whose outputs differ is {first}"
        )
    return difference


def first_differing_layer(model3, model2, images: np.ndarray, atol: float) -> str:
    """'name (Class)' of the first top-level layer whose outputs differ between the two models."""
    from pruneflow.tasks.core.runtime import keras as tf_keras
    from pruneflow.tasks.core.runtime import keras_3

    keras = keras_3()
    for layer3 in model3.layers:
        if type(layer3).__name__ == "InputLayer":
            continue
        # A layer whose activation was rebuilt ends in the helper layer named after both.
        names = [f"{layer3.name}_{activation}" for activation in REBUILT_ACTIVATIONS] + [layer3.name]
        layer2 = next((layer for layer in model2.layers if layer.name in names[:-1]), None) or next(
            (layer for layer in model2.layers if layer.name == layer3.name), None)
        if layer2 is None:
            continue
        try:
            probe3 = keras.Model(model3.inputs, layer3.output)
            probe2 = tf_keras.Model(model2.inputs, layer2.output)
        except (AttributeError, ValueError):  # a layer called several times has no single output
            continue
        if not within(np.asarray(probe3(images, training=False)), np.asarray(probe2(images, training=False)), atol):
            return f"{layer3.name} ({type(layer3).__name__})"
    return "none of the top-level layers (the difference comes from a nested model or the outputs)"


def hand_back(model2, baseline3):
    """The Keras 3 baseline's architecture with the tf_keras model's weights (pruned zeros kept):
    `baseline3` (loaded with load_keras3) has its weights replaced, layer by layer, by name."""
    for layer3, path in _walk3(baseline3):
        layer2 = _find(model2, path)
        if layer2 is None:
            if layer3.weights:
                raise PruneflowError(f"layer {path} of the Keras 3 baseline is missing from the pruned model")
            continue

        def refuse(why, path=path, layer3=layer3):
            return PruneflowError(f"layer {path} ({type(layer3).__name__}): {why}")

        _copy_weights(layer2, layer3, refuse)
    return baseline3


def _walk3(model, prefix: str = ""):
    for layer in model.layers:
        if type(layer).__name__ in _MODELS:
            yield from _walk3(layer, f"{prefix}{layer.name}/")
        elif type(layer).__name__ != "InputLayer":
            yield layer, prefix + layer.name


def _find(model, path: str):
    head, _, rest = path.partition("/")
    try:
        layer = model.get_layer(head)
    except ValueError:
        return None
    return _find(layer, rest) if rest else layer


def archive_bytes(model3) -> bytes:
    """A Keras 3 model as the bytes of its `.keras` archive (saved whole, uncompiled)."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="pruneflow-keras3-") as folder:
        path = Path(folder) / "model.keras"
        model3.save(path)
        return path.read_bytes()


# --- running a Keras 3 file (the runtime of the keras3 format) ---------------------------------

def weight_tensors(path: Path) -> list:
    """Every weight of two or more dimensions of a Keras 3 file, loaded with Keras 3, with its zeros;
    named '<model>/<layer path>/<weight>' as the file-kernel matching reads names."""
    from pruneflow.tasks.libs.artifacts import WeightTensor

    model3 = load_keras3(path)
    found = []
    for layer, layer_path in _walk3(model3):
        for weight in layer.weights:
            values = np.asarray(weight.numpy())
            if values.ndim < 2:
                continue
            found.append(WeightTensor(
                name=f"{model3.name}/{layer_path}/{_weight_name(weight)}", shape=list(values.shape),
                size=int(values.size), zeros=int(np.count_nonzero(values == 0)), stored_sparse=False,
            ))
    return found


def predictor(path: Path, threads: int, batch: int):
    """The file run by Keras 3 on batches of images (TensorFlow's own threads)."""
    model3 = load_keras3(path)
    return lambda images: np.asarray(model3(images, training=False))


def timed_call(path: Path, images: np.ndarray, threads: int):
    """One Keras 3 invocation on `images`, compiled as the Keras model's is (see timing.keras_call)."""
    from pruneflow.tasks.libs.timing import Invocation, keras_call

    return Invocation(keras_call(load_keras3(path), images))
