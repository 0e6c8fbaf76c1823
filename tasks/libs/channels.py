"""Channel pruning: whole output channels removed from convolutions and Dense layers, and the
model rebuilt physically smaller, so it runs faster on every runtime, dense or not.

Three steps, each a plain function:

- `trace_channels` follows the channels through the model's graph (nested models walked in
  place) and groups those that must go together: a layer's output channels are one *space*;
  BatchNormalization and DepthwiseConv2D pass a space on (their weights follow it), Add,
  Multiply and the other merges join their inputs' spaces into one group (a residual block, a
  squeeze-excite scale), Concatenate lays spaces side by side, Flatten repeats them once per
  position for the Dense layer after it. A space that reaches something this module does not
  know (a Lambda, an operation, a softmax over the channels, a Reshape that moves them), the
  model's inputs or its outputs (the classifier's classes) is left whole, with the reason.
- `plan_channels` ranks each prunable group's channels (L1 or L2 norm of the producing kernels,
  or the BatchNormalization scale after them) and chooses which to keep.
- `rebuild` clones the model with the narrower layers and copies the kept weights.

`layer_costs` gives each layer's parameters and multiply-add FLOPs, for the report.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict

from pruneflow.tasks.core.errors import PruneflowError
from pruneflow.tasks.libs.selection import dense_by_choice, matches, walk

Criterion = Literal["l1", "l2", "bn_scale"]

# Layers that act on each channel alone and hold no weight: a space passes through unchanged.
_ELEMENTWISE = (
    "Activation", "ReLU", "LeakyReLU", "ELU", "ThresholdedReLU", "Dropout", "SpatialDropout1D", "SpatialDropout2D",
    "SpatialDropout3D", "GaussianNoise", "GaussianDropout", "AlphaDropout", "ActivityRegularization",
    "MaxPooling1D", "MaxPooling2D", "MaxPooling3D", "AveragePooling1D", "AveragePooling2D", "AveragePooling3D",
    "GlobalAveragePooling1D", "GlobalAveragePooling2D", "GlobalAveragePooling3D", "GlobalMaxPooling1D",
    "GlobalMaxPooling2D", "GlobalMaxPooling3D", "ZeroPadding1D", "ZeroPadding2D", "ZeroPadding3D", "Cropping1D",
    "Cropping2D", "Cropping3D", "UpSampling1D", "UpSampling2D", "UpSampling3D", "Rescaling", "Identity",
)
_MERGES = ("Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum")
_PRODUCERS = ("Conv1D", "Conv2D", "Conv3D", "Dense", "SeparableConv1D", "SeparableConv2D")
_DEPTHWISE = ("DepthwiseConv1D", "DepthwiseConv2D")
# Activations that mix the channels: a channel removed changes the others.
_MIXING_ACTIVATIONS = ("softmax", "log_softmax")


@dataclass
class _Space:
    """A set of channels that are kept or removed together (a union-find node)."""

    count: int
    parent: int
    producers: list[str] = field(default_factory=list)  # layers whose output channels these are
    followers: list[str] = field(default_factory=list)  # BatchNormalization, DepthwiseConv2D on them
    blocked: str = ""  # why the channels must stay whole


@dataclass(frozen=True)
class Channels:
    """A tensor's last axis: spaces side by side (Concatenate), repeated once per position (Flatten)."""

    segments: tuple[tuple[int, int], ...]  # (space, channels)
    repeat: int = 1

    @property
    def count(self) -> int:
        return self.repeat * sum(n for _, n in self.segments)


@dataclass
class _LayerUse:
    """How a layer's weights follow the channels: its input's and (for a producer) its output's."""

    role: Literal["producer", "follower", "reshape", "whole"]
    layer: object
    inputs: Channels | None = None
    output: int | None = None  # a producer's space


class Tracing:
    """The channel spaces of a model and how each layer uses them (`trace_channels` builds it)."""

    def __init__(self):
        self.spaces: list[_Space] = []
        self.uses: dict[str, _LayerUse] = {}  # layer path -> its use
        self.layers: dict[str, object] = {}
        self.seen: set[str] = set()  # the layer paths met so far: a layer met twice is shared

    def new(self, count: int, *, producer: str = "", blocked: str = "") -> Channels:
        index = len(self.spaces)
        self.spaces.append(_Space(count=count, parent=index, producers=[producer] if producer else [], blocked=blocked))
        return Channels(((index, count),))

    def root(self, space: int) -> int:
        while self.spaces[space].parent != space:
            self.spaces[space].parent = self.spaces[self.spaces[space].parent].parent
            space = self.spaces[space].parent
        return space

    def join(self, a: int, b: int) -> None:
        a, b = self.root(a), self.root(b)
        if a == b:
            return
        keep, gone = self.spaces[a], self.spaces[b]
        gone.parent = a
        keep.producers += gone.producers
        keep.followers += gone.followers
        keep.blocked = keep.blocked or gone.blocked

    def block(self, channels: Channels, reason: str) -> None:
        for space, _ in channels.segments:
            root = self.spaces[self.root(space)]
            root.blocked = root.blocked or reason

    def output(self, use: _LayerUse) -> Channels:
        """A producer's output channels, as one space."""
        return Channels(((use.output, self.spaces[use.output].count),))

    def kept(self, plan: ChannelPlan) -> dict[int, list[int]]:
        """The kept channels of each group the plan prunes, by the group's root space."""
        return {self.root(self.uses[group.layers[0]].output): group.kept for group in plan.pruned}

    def groups(self) -> dict[int, _Space]:
        return {index: space for index, space in enumerate(self.spaces) if space.parent == index}


def trace_channels(model) -> Tracing:
    """Follow the channels through `model` (a functional or Sequential tf_keras model).

    Raises:
        PruneflowError: a model that is not a graph of layers (subclassed, or never built).
    """
    tracing = Tracing()
    inputs = [tracing.new(int(t.shape[-1]), blocked="the model's input") for t in model.inputs]
    for out in _trace(tracing, model, "", inputs):
        for space, _ in out.segments:  # the reason a user looks for first
            tracing.spaces[tracing.root(space)].blocked = "the model's output (the classifier's classes)"
    return tracing


def _trace(tracing: Tracing, model, prefix: str, inputs: list[Channels]) -> list[Channels]:
    from pruneflow.tasks.core.runtime import keras, tf

    if not getattr(model, "_is_graph_network", False):
        raise PruneflowError(
            f"{prefix or model.name}: a {type(model).__name__} that is not a graph of layers (subclassed, or built "
            "without an Input): channels can only be followed through Sequential and functional models."
        )
    tensors: dict[int, Channels] = {id(t): c for t, c in zip(model.inputs, inputs)}
    network_nodes = model._network_nodes
    for depth in sorted(model._nodes_by_depth, reverse=True):
        for node in model._nodes_by_depth[depth]:
            layer = node.layer
            if isinstance(layer, keras.layers.InputLayer):
                continue
            index = layer._inbound_nodes.index(node)
            if f"{layer.name}_ib-{index}" not in network_nodes:
                continue
            ins = [tensors[id(t)] for t in node.keras_inputs]
            outs = tf.nest.flatten(node.outputs)
            path = prefix + layer.name
            if isinstance(layer, keras.Model):
                if path in tracing.uses:
                    raise PruneflowError(f"{path}: a nested model called twice cannot have its channels pruned")
                tracing.uses[path] = _LayerUse("whole", layer)
                results = _trace(tracing, layer, path + "/", ins)
            else:
                results = _through(tracing, layer, path, ins, list(node.keras_inputs), outs)
            for tensor, channels in zip(outs, results):
                tensors[id(tensor)] = channels
    return [tensors[id(t)] for t in model.outputs]


def _channels_last(layer, rank: int) -> bool:
    axis = getattr(layer, "axis", -1)
    axes = axis if isinstance(axis, (list, tuple)) else [axis]
    return getattr(layer, "data_format", "channels_last") == "channels_last" and all(a in (-1, rank - 1) for a in axes)


def _through(tracing: Tracing, layer, path: str, ins: list[Channels], in_tensors: list, outs: list) -> list[Channels]:
    """The channels of a layer's outputs, given its inputs'; what it does to the spaces recorded."""
    kind = type(layer).__name__
    tracing.layers[path] = layer
    shared = path in tracing.seen
    tracing.seen.add(path)
    if shared and path in tracing.uses:  # a layer called twice: its weights serve both calls
        earlier = tracing.uses[path]
        if earlier.inputs is not None:
            tracing.block(earlier.inputs, f"{path} is called more than once")
        if earlier.output is not None:
            tracing.block(Channels(((earlier.output, 0),)), f"{path} is called more than once")
    if kind in _PRODUCERS and len(ins) == 1 and not shared and _plain_producer(layer):
        (source,) = ins
        count = int(layer.filters if hasattr(layer, "filters") else layer.units)
        activation = getattr(getattr(layer, "activation", None), "__name__", "")
        output = tracing.new(count, producer=path)
        if activation in _MIXING_ACTIVATIONS:
            tracing.block(output, f"{path}'s {activation} activation mixes its channels")
        tracing.uses[path] = _LayerUse("producer", layer, inputs=source, output=output.segments[0][0])
        return [output]
    if kind in _DEPTHWISE + ("BatchNormalization",) and len(ins) == 1 and not shared and ins[0].repeat == 1 and (
        getattr(layer, "depth_multiplier", 1) == 1 and _channels_last(layer, len(outs[0].shape))
    ):
        (source,) = ins
        for space, _ in source.segments:
            tracing.spaces[tracing.root(space)].followers.append(path)
        tracing.uses[path] = _LayerUse("follower", layer, inputs=source)
        return [source]
    if kind in _ELEMENTWISE and len(ins) == 1 and not layer.weights and _elementwise(layer):
        return [ins[0]]
    if kind in _MERGES and ins and len({c.count for c in ins}) <= 2:
        width = int(outs[0].shape[-1])
        joined = [c for c in ins if c.count == width]
        if joined and all(_same_layout(joined[0], other) for other in joined[1:]) and all(c.count in (width, 1) for c in ins):
            for other in joined[1:]:
                for (a, _), (b, _) in zip(joined[0].segments, other.segments):
                    tracing.join(a, b)
            return [joined[0]]
    if kind == "Concatenate" and all(c.repeat == 1 for c in ins) and _channels_last(layer, len(outs[0].shape)):
        return [Channels(tuple(segment for c in ins for segment in c.segments))]
    if kind == "Flatten" and len(ins) == 1 and ins[0].repeat == 1 and _channels_last(layer, len(in_tensors[0].shape)):
        positions = int(np.prod(in_tensors[0].shape[1:-1]))
        return [Channels(ins[0].segments, repeat=positions)]
    if kind == "Reshape" and len(ins) == 1 and ins[0].repeat == 1 and not shared and (
        tuple(layer.target_shape)[-1] == ins[0].count and int(np.prod(layer.target_shape[:-1])) == 1
    ):
        tracing.uses[path] = _LayerUse("reshape", layer, inputs=ins[0])
        return [ins[0]]
    for channels in ins:
        tracing.block(channels, f"{path} ({kind}) uses them as a whole")
    tracing.uses.setdefault(path, _LayerUse("whole", layer))  # a shared layer keeps its first use, now blocked
    return [tracing.new(int(t.shape[-1]), blocked=f"made by {path} ({kind})") for t in outs]


def _plain_producer(layer) -> bool:
    """A Dense layer, or a convolution whose output channels are independent (no groups, no
    depth multiplier, not transposed)."""
    kind = type(layer).__name__
    if kind == "Dense":
        return True
    return (
        getattr(layer, "groups", 1) == 1 and getattr(layer, "depth_multiplier", 1) == 1
        and getattr(layer, "data_format", "channels_last") == "channels_last"
    )


def _elementwise(layer) -> bool:
    kind = type(layer).__name__
    if kind == "Activation":
        return getattr(layer.activation, "__name__", "") not in _MIXING_ACTIVATIONS
    if kind == "Rescaling":
        return np.ndim(layer.scale) == 0 and np.ndim(layer.offset) == 0
    return getattr(layer, "data_format", "channels_last") == "channels_last"


def _same_layout(a: Channels, b: Channels) -> bool:
    return a.repeat == b.repeat and [n for _, n in a.segments] == [n for _, n in b.segments]


class ChannelGroup(BaseModel):
    """Channels that are kept or removed together, and what became of them."""

    model_config = ConfigDict(frozen=True)

    layers: list[str]  # the layers whose output channels these are
    followers: list[str] = []  # BatchNormalization and DepthwiseConv2D layers that follow them
    channels: int
    kept: list[int]  # indices of the kept channels, ascending
    reason: str = ""  # why the group was left whole

    @property
    def removed(self) -> int:
        return self.channels - len(self.kept)


class ChannelPlan(BaseModel):
    """Which channels a model keeps, group by group."""

    model_config = ConfigDict(frozen=True)

    criterion: Criterion
    groups: list[ChannelGroup]

    @property
    def pruned(self) -> list[ChannelGroup]:
        return [group for group in self.groups if group.removed]

    @property
    def whole(self) -> list[ChannelGroup]:
        return [group for group in self.groups if not group.removed]


def plan_channels(
    model, tracing: Tracing, *, fraction: float, criterion: Criterion = "l1", overrides: dict[str, float] | None = None,
    selection=None, model_path: Path | None = None, multiple: int = 1, round_to: int = 1,
) -> ChannelPlan:
    """Choose the channels each group keeps: the `fraction` (or its layers' override) of lowest
    score removed, at least one kept. With `round_to`, a group keeps the multiple of it nearest
    to that count (the channel tiles kernels compute in); with `multiple` (what 2:4 sparsity needs
    of the next layer's input channels), a multiple of it, rounded up.

    Args:
        overrides: pattern -> fraction, matched against each producing layer's path, name or class;
            a group takes the smallest fraction its layers match.
        selection: the run's LayerSelection: a group with a layer it leaves dense stays whole.

    Raises:
        PruneflowError: an override pattern that matches no layer that produces channels.
    """
    overrides = overrides or {}
    producers = {path: use.layer for path, use in tracing.uses.items() if use.role == "producer"}
    unmatched = [p for p in overrides if not any(matches(p, path, layer) for path, layer in producers.items())]
    if unmatched:
        raise PruneflowError(
            f"{model_path or model.name}: channel_pruning.layers {unmatched} match no layer with output channels; "
            f"those are: {', '.join(producers)}."
        )
    first_conv = next((path for path, layer in producers.items() if "Conv" in type(layer).__name__), None)
    groups = []
    for space in tracing.groups().values():
        if not space.producers:
            continue
        reason = space.blocked or _left_dense(space.producers, producers, selection, first_conv)
        share = min((f for p, f in overrides.items() for path in space.producers if matches(p, path, producers[path])),
                    default=fraction)
        keep = _kept_count(space.count, share, multiple, round_to)
        remove = 0 if reason else space.count - keep
        if not reason and not remove:
            reason = (f"{share:g} of {space.count} channels is less than one" if round_to == 1 else
                      f"{share:g} of {space.count} channels, rounded to a multiple of {round_to}, is none")
        scores = _scores(space, producers, tracing.layers, criterion)
        kept = sorted(int(i) for i in np.argsort(scores, kind="stable")[remove:])
        groups.append(ChannelGroup(layers=space.producers, followers=space.followers, channels=space.count,
                                   kept=kept, reason=reason))
    return ChannelPlan(criterion=criterion, groups=groups)


def _kept_count(count: int, share: float, multiple: int, round_to: int) -> int:
    """How many of `count` channels a group keeps: what removing `share` leaves (rounded up), then
    the nearest multiple of round_to, rounded up to a multiple of `multiple`; within [1, count]."""
    keep = max(count - int(count * share), 1)
    if round_to > 1:
        keep = max(round_to, int(keep / round_to + 0.5) * round_to)
    return min(count, -(-keep // multiple) * multiple)


def _left_dense(paths: list[str], producers: dict, selection, first_conv: str | None) -> str:
    if selection is None:
        return ""
    for path in paths:
        kept_by = "layers.keep_first_conv" if selection.keep_first_conv and path == first_conv else None
        reason = dense_by_choice(path, producers[path], selection, kept_by, None, "")
        if reason:
            return f"{path}: {reason}"
    return ""


def _scores(space: _Space, producers: dict, layers: dict, criterion: Criterion) -> np.ndarray:
    """Each channel's importance: each producer's (or BatchNormalization's) scores over their mean, summed."""
    sources = []
    if criterion == "bn_scale":
        sources = [np.abs(layers[p].gamma.numpy()) for p in space.followers
                   if type(layers[p]).__name__ == "BatchNormalization" and layers[p].gamma is not None]
    if not sources:
        for path in space.producers:
            layer = producers[path]
            kernel = (layer.pointwise_kernel if hasattr(layer, "pointwise_kernel") else layer.kernel).numpy()
            columns = kernel.reshape(-1, kernel.shape[-1])
            sources.append(np.abs(columns).mean(0) if criterion != "l2" else np.sqrt((columns ** 2).mean(0)))
    total = np.zeros(space.count)
    for scores in sources:
        total += scores / (scores.mean() or 1.0)
    return total


def _indices(channels: Channels, kept: dict[int, list[int]], tracing: Tracing) -> np.ndarray:
    """The positions along a tensor's last axis that remain."""
    per_copy, offset = [], 0
    for space, count in channels.segments:
        per_copy.append(offset + np.asarray(kept.get(tracing.root(space), range(count)), dtype=int))
        offset += count
    one = np.concatenate(per_copy) if per_copy else np.zeros(0, dtype=int)
    return np.concatenate([one + copy * offset for copy in range(channels.repeat)])


def rebuild(model, tracing: Tracing, plan: ChannelPlan):
    """A new model with the plan's channels removed and the kept weights copied; layer names and
    nesting as in `model`."""
    from pruneflow.tasks.core.runtime import keras

    roots = tracing.kept(plan)
    width = {}  # layer path -> its new filters/units or target shape
    for path, use in tracing.uses.items():
        if use.role == "producer" and tracing.root(use.output) in roots:
            width[path] = len(roots[tracing.root(use.output)])
        elif use.role == "reshape":
            width[path] = len(_indices(use.inputs, roots, tracing))
    paths = {id(layer): path for path, layer in walk(model)}

    def narrower(layer):
        if isinstance(layer, keras.Model):
            return keras.models.clone_model(layer, clone_function=narrower)
        config = layer.get_config()
        path = paths.get(id(layer))
        if path in width:
            use = tracing.uses[path]
            if use.role == "reshape":
                config["target_shape"] = (*tuple(layer.target_shape)[:-1], width[path])
            else:
                config["filters" if "filters" in config else "units"] = width[path]
        return type(layer).from_config(config)

    rebuilt = keras.models.clone_model(model, clone_function=narrower)
    new_layers = dict(walk(rebuilt))
    for path, layer in walk(model):
        _copy_weights(layer, new_layers[path], tracing.uses.get(path), roots, tracing, path)
    return rebuilt


def zero_removed(tracing: Tracing, plan: ChannelPlan) -> None:
    """Set to zero, in the traced model itself, every weight that makes a channel the plan removes:
    its producers' kernel columns and biases, its followers' scales, offsets and depthwise
    kernels. The model then computes what the rebuilt one does, where every activation is zero at
    zero (ReLU, ReLU6, swish, hard swish: the models pruneflow prunes)."""
    roots = tracing.kept(plan)
    for path, use in tracing.uses.items():
        if use.role == "producer" and tracing.root(use.output) in roots:
            gone = _removed(tracing.output(use), roots, tracing)
            for name in ("kernel", "pointwise_kernel"):
                if getattr(use.layer, name, None) is not None:
                    _zero(getattr(use.layer, name), -1, gone)
            if getattr(use.layer, "bias", None) is not None:
                _zero(use.layer.bias, 0, gone)
        elif use.role == "follower":
            gone = _removed(use.inputs, roots, tracing)
            if getattr(use.layer, "depthwise_kernel", None) is not None:
                _zero(use.layer.depthwise_kernel, -2, gone)
            for name in ("bias", "gamma", "beta"):
                if getattr(use.layer, name, None) is not None:
                    _zero(getattr(use.layer, name), 0, gone)


def _removed(channels: Channels, kept: dict, tracing: Tracing) -> np.ndarray:
    return np.setdiff1d(np.arange(channels.count), _indices(channels, kept, tracing))


def _zero(variable, axis: int, index: np.ndarray) -> None:
    value = variable.numpy()
    moved = np.moveaxis(value, axis, 0)
    moved[index] = 0
    variable.assign(value)


def _copy_weights(old, new, use: _LayerUse | None, kept: dict, tracing: Tracing, path: str) -> None:
    if not old.weights:
        return
    slices: dict[int, list[tuple[int, np.ndarray]]] = {}
    if use is not None and use.role in ("producer", "follower"):
        inputs = _indices(use.inputs, kept, tracing)
        if use.role == "producer":
            outputs = _indices(tracing.output(use), kept, tracing)
            for name in ("kernel", "pointwise_kernel"):
                if getattr(old, name, None) is not None:
                    slices[id(getattr(old, name))] = [(-2, inputs), (-1, outputs)]
            if getattr(old, "depthwise_kernel", None) is not None:
                slices[id(old.depthwise_kernel)] = [(-2, inputs)]
            if getattr(old, "bias", None) is not None:
                slices[id(old.bias)] = [(0, outputs)]
        else:
            for weight in old.weights:
                slices[id(weight)] = [(0, inputs)]
            if getattr(old, "depthwise_kernel", None) is not None:
                slices[id(old.depthwise_kernel)] = [(-2, inputs)]
    values = []
    for weight, target in zip(old.weights, new.weights):
        value = weight.numpy()
        for axis, index in slices.get(id(weight), []):
            value = np.take(value, index, axis=axis)
        if value.shape != tuple(target.shape):
            raise PruneflowError(
                f"{path}: weight {weight.name} would be {list(value.shape)} after channel pruning, but the rebuilt "
                f"layer needs {list(target.shape)}: a graph this module does not follow yet. Leave the layer whole "
                "with channel_pruning.layers or layers.exclude."
            )
        values.append(value)
    new.set_weights(values)


class LayerCost(BaseModel):
    """One layer's size and work."""

    model_config = ConfigDict(frozen=True)

    path: str
    kind: str
    params: int
    flops: int  # 2 x multiply-adds for one image


def layer_costs(model) -> list[LayerCost]:
    """Each layer's parameters and FLOPs for one image (convolutions, depthwise and separable
    convolutions and Dense layers; other layers count 0 FLOPs)."""
    costs = []
    for path, layer in walk(model):
        costs.append(LayerCost(path=path, kind=type(layer).__name__, params=int(layer.count_params()),
                               flops=_flops(layer)))
    return costs


def _flops(layer) -> int:
    kind = type(layer).__name__
    try:
        out_shape, in_shape = layer.output_shape, layer.input_shape
    except (AttributeError, RuntimeError):
        return 0
    if not isinstance(out_shape, tuple) or not isinstance(in_shape, tuple):
        return 0
    positions = int(np.prod([d for d in out_shape[1:-1] if d]))
    cin, cout = int(in_shape[-1]), int(out_shape[-1])
    if kind in _DEPTHWISE:
        return 2 * int(np.prod(layer.kernel_size)) * cout * positions
    if kind.startswith("SeparableConv"):
        multiplier = layer.depth_multiplier
        return 2 * positions * (int(np.prod(layer.kernel_size)) * cin * multiplier + cin * multiplier * cout)
    if kind.startswith("Conv") and hasattr(layer, "kernel_size"):
        return 2 * int(np.prod(layer.kernel_size)) * cin // getattr(layer, "groups", 1) * cout * positions
    if kind == "Dense":
        return 2 * cin * cout * positions
    return 0
