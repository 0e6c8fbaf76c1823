"""Channel pruning: the groups read from the graph, and the rebuilt model computing what the
model with those channels zeroed computes, on every model shape the suite builds."""

import re

import numpy as np
import pytest

from pruneflow.tasks.core.errors import PruneflowError
from pruneflow.tasks.libs.channels import layer_costs, plan_channels, rebuild, trace_channels, zero_removed
from pruneflow.tasks.specs.config import LayerSelection
from tests.helpers.data import IMAGE_SIZE
from tests.helpers.models import MODEL_KINDS, build_tiny_cnn


def build_blocks():
    """A functional CNN with what channel groups must respect: Conv-BN pairs, a residual Add, a
    DepthwiseConv2D, a squeeze-excite Multiply (GlobalAveragePooling, Reshape, two Dense), a
    Concatenate and a Flatten before the classifier."""
    from pruneflow.tasks.core.runtime import keras

    layers = keras.layers
    inputs = keras.Input((IMAGE_SIZE, IMAGE_SIZE, 3))
    stem = layers.ReLU()(layers.BatchNormalization(name="stem_bn")(layers.Conv2D(8, 3, padding="same", name="stem")(inputs)))
    branch = layers.BatchNormalization(name="branch_bn")(layers.Conv2D(8, 3, padding="same", name="branch")(stem))
    residual = layers.ReLU()(layers.Add(name="residual")([stem, branch]))
    depthwise = layers.ReLU()(layers.DepthwiseConv2D(3, padding="same", name="depthwise")(residual))
    squeezed = layers.Reshape((1, 1, 8))(layers.GlobalAveragePooling2D()(depthwise))
    excite = layers.Dense(8, activation="sigmoid", name="excite")(layers.Dense(4, activation="relu", name="squeeze")(squeezed))
    scaled = layers.Multiply(name="scale")([depthwise, excite])
    side = layers.Conv2D(6, 1, activation="relu", name="side")(stem)
    joined = layers.MaxPooling2D()(layers.Concatenate(name="join")([scaled, side]))
    hidden = layers.Dense(16, activation="relu", name="hidden")(layers.Flatten()(joined))
    return keras.Model(inputs, layers.Dense(2, activation="softmax", name="classifier")(hidden), name="blocks")


def build_nested_mobilenet():
    """keras.applications' MobileNetV2 (alpha 0.35, no weights) nested in a Sequential classifier."""
    from pruneflow.tasks.core.runtime import keras

    backbone = keras.applications.MobileNetV2(input_shape=(32, 32, 3), alpha=0.35, include_top=False, weights=None)
    return keras.Sequential([keras.Input((32, 32, 3)), backbone, keras.layers.GlobalAveragePooling2D(),
                             keras.layers.Dense(3, activation="softmax")])


def build_odd_layers():
    """Layers whose channels cannot be separated (a grouped convolution, a transposed one, a
    LayerNormalization, a TensorFlow operation) between ones that can, and a Conv1D branch."""
    from pruneflow.tasks.core.runtime import keras, tf

    layers = keras.layers
    inputs = keras.Input((IMAGE_SIZE, IMAGE_SIZE, 4))
    x = layers.Conv2D(8, 3, padding="same", groups=2, activation="relu", name="grouped")(inputs)
    x = layers.Conv2D(8, 1, activation="relu", name="after_grouped")(x)
    x = layers.Conv2DTranspose(6, 3, strides=2, padding="same", name="transposed")(x)
    x = layers.Conv2D(8, 3, strides=2, name="after_transposed")(layers.LayerNormalization()(x))
    x = layers.Conv2D(8, 3, name="before_op")(tf.nn.relu(x))
    sequence = layers.Reshape((-1, 8), name="to_sequence")(x)
    x = layers.GlobalMaxPooling1D()(layers.Conv1D(6, 3, activation="relu", name="conv1d")(sequence))
    return keras.Model(inputs, layers.Dense(2, name="classifier")(x), name="odd_layers")


BUILDERS = {
    **{kind: (lambda kind=kind: build_tiny_cnn(kind=kind)) for kind in MODEL_KINDS},
    "blocks": build_blocks,
    "odd_layers": build_odd_layers,
    "nested_mobilenet_v2": build_nested_mobilenet,
}


def randomized(model, seed: int = 0):
    """Random weights everywhere, BatchNormalization statistics included, so nothing is trivially equal."""
    rng = np.random.default_rng(seed)
    model.set_weights([
        rng.uniform(0.5, 1.5, w.shape) if "variance" in v.name else rng.normal(0, 0.5, w.shape)
        for v, w in zip(model.weights, model.get_weights())
    ])
    return model


def images(model, n: int = 4, seed: int = 1):
    return np.random.default_rng(seed).uniform(0, 1, (n, *model.input_shape[1:])).astype("float32")


@pytest.mark.parametrize("name", BUILDERS)
def test_removing_zeroed_channels_leaves_the_outputs_unchanged(name):
    model = randomized(BUILDERS[name]())
    tracing = trace_channels(model)
    plan = plan_channels(model, tracing, fraction=0.5)
    assert plan.pruned, plan
    zero_removed(tracing, plan)
    rebuilt = rebuild(model, tracing, plan)
    x = images(model)
    np.testing.assert_allclose(rebuilt(x, training=False).numpy(), model(x, training=False).numpy(), atol=1e-5, rtol=1e-4)
    assert rebuilt.count_params() < model.count_params()
    assert [layer.name for layer in rebuilt.layers] == [layer.name for layer in model.layers]
    before = {cost.path: cost for cost in layer_costs(model)}
    after = {cost.path: cost for cost in layer_costs(rebuilt)}
    assert before.keys() == after.keys()
    assert sum(c.flops for c in after.values()) < sum(c.flops for c in before.values())
    for group in plan.pruned:
        for path in group.layers:
            kernel = after[path]
            assert kernel.params < before[path].params, path


def test_the_groups_follow_residuals_squeeze_excite_concatenation_and_the_classifier():
    model = build_blocks()
    plan = plan_channels(model, trace_channels(model), fraction=0.5)
    groups = {tuple(g.layers): g for g in plan.groups}
    # stem, the residual branch and the excite Dense are one group: Add and Multiply join them,
    # DepthwiseConv2D and both BatchNormalizations follow it.
    [joined] = [g for g in plan.groups if "stem" in g.layers]
    assert sorted(joined.layers) == ["branch", "excite", "stem"]
    assert sorted(joined.followers) == ["branch_bn", "depthwise", "stem_bn"]
    assert joined.channels == 8 and len(joined.kept) == 4
    assert len(groups[("side",)].kept) == 3 and len(groups[("squeeze",)].kept) == 2
    assert len(groups[("hidden",)].kept) == 8
    assert groups[("classifier",)].kept == [0, 1] and "output" in groups[("classifier",)].reason
    rebuilt = rebuild(model, trace_channels(model), plan)
    assert rebuilt.get_layer("join").output_shape[-1] == 4 + 3
    assert rebuilt.get_layer("hidden").kernel.shape == ((IMAGE_SIZE // 2) ** 2 * 7, 8)  # Flatten's rows follow


def test_a_layer_that_uses_channels_as_a_whole_keeps_them_and_says_why():
    from pruneflow.tasks.core.runtime import keras

    inputs = keras.Input((IMAGE_SIZE, IMAGE_SIZE, 3))
    conv = keras.layers.Conv2D(8, 3, name="conv")(inputs)
    mixed = keras.layers.Softmax(name="over_channels")(conv)
    kept = keras.layers.Conv2D(4, 3, name="next")(mixed)
    model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Flatten()(kept)))
    plan = plan_channels(model, trace_channels(model), fraction=0.5)
    [conv_group] = [g for g in plan.groups if g.layers == ["conv"]]
    assert conv_group.removed == 0 and conv_group.reason == "over_channels (Softmax) uses them as a whole"
    [next_group] = [g for g in plan.groups if g.layers == ["next"]]
    assert next_group.removed == 2


def test_the_layer_selection_and_overrides_choose_the_fraction_per_group():
    model = build_tiny_cnn(kind="nested")
    tracing = trace_channels(model)
    hidden = model.layers[-2].name  # the Dense layer before the classifier
    selection = LayerSelection(exclude=[hidden])
    plan = plan_channels(model, tracing, fraction=0.5, overrides={"backbone/*": 0.25}, selection=selection)
    by_layer = {g.layers[0]: g for g in plan.groups}
    conv = next(path for path in by_layer if path.startswith("backbone/"))
    assert by_layer[conv].removed == 2  # 0.25 of 8
    assert by_layer[hidden].removed == 0 and f"layers.exclude {hidden!r}" in by_layer[hidden].reason
    first = plan_channels(model, tracing, fraction=0.5, selection=LayerSelection(keep_first_conv=True))
    assert {g.layers[0]: g.reason for g in first.groups}[conv] == f"{conv}: layers.keep_first_conv"
    by_four = plan_channels(model, tracing, fraction=0.6, multiple=4)  # for 2:4 sparsity after
    assert {g.layers[0]: len(g.kept) for g in by_four.pruned} == {conv: 4, hidden: 16}  # 8 keeps 4; 32 keeps 13, rounded up to 16
    by_tile = {g.layers[0]: g for g in plan_channels(model, tracing, fraction=0.3, round_to=8).groups}
    assert len(by_tile[hidden].kept) == 24  # 32 keeps 23, the nearest multiple of 8
    assert not by_tile[conv].removed and "rounded to a multiple of 8, is none" in by_tile[conv].reason  # 8 keeps 6 -> 8
    by_wide_tile = {g.layers[0]: g for g in plan_channels(model, tracing, fraction=0.3, round_to=16).groups}
    assert len(by_wide_tile[hidden].kept) == 16  # 23 is nearer 16 than 32
    with pytest.raises(PruneflowError, match=r"channel_pruning.layers \['head/\*'\] match no layer"):
        plan_channels(model, tracing, fraction=0.5, overrides={"head/*": 0.5})


@pytest.mark.parametrize("criterion", ["l1", "l2", "bn_scale"])
def test_the_weakest_channels_go_first(criterion):
    model = randomized(build_blocks())
    stem, bn = model.get_layer("stem"), model.get_layer("stem_bn")
    kernel, gamma = stem.kernel.numpy(), bn.gamma.numpy()
    kernel[..., [1, 6]] *= 1e-3  # channels 1 and 6 weakest by norm
    gamma[[2, 5]] = 1e-3  # channels 2 and 5 weakest by the BatchNormalization scale
    stem.kernel.assign(kernel)
    bn.gamma.assign(gamma)
    for name in ("branch", "excite"):
        layer = model.get_layer(name)
        layer.kernel.assign(np.ones_like(layer.kernel.numpy()))
    model.get_layer("branch_bn").gamma.assign(np.ones(8))
    plan = plan_channels(model, trace_channels(model), fraction=0.25, criterion=criterion)
    [group] = [g for g in plan.groups if "stem" in g.layers]
    removed = sorted(set(range(8)) - set(group.kept))
    assert removed == ([2, 5] if criterion == "bn_scale" else [1, 6])


def test_a_layer_called_twice_keeps_its_channels_and_the_model_still_rebuilds():
    from pruneflow.tasks.core.runtime import keras

    layers = keras.layers
    inputs = keras.Input((IMAGE_SIZE, IMAGE_SIZE, 3))
    features = layers.Flatten()(layers.Conv2D(4, 3, activation="relu", name="conv")(inputs))
    shared = layers.Dense(8, activation="relu", name="shared")
    both = layers.Add()([shared(features), shared(layers.Dropout(0.1)(features))])
    model = randomized(keras.Model(inputs, layers.Dense(2, name="classifier")(both)))
    tracing = trace_channels(model)
    plan = plan_channels(model, tracing, fraction=0.5)
    groups = {g.layers[0]: g for g in plan.groups}
    assert groups["shared"].removed == 0 and groups["shared"].reason == "shared is called more than once"
    assert groups["conv"].reason == "shared is called more than once"  # its rows serve both calls
    rebuilt = rebuild(model, tracing, plan)
    x = images(model)
    np.testing.assert_allclose(rebuilt(x, training=False).numpy(), model(x, training=False).numpy(), atol=1e-6)


def test_layers_that_use_channels_whole_are_named_as_the_reason():
    model = build_odd_layers()
    plan = plan_channels(model, trace_channels(model), fraction=0.5)
    unnumbered = lambda reason: re.sub(r"_\d+ \(", " (", reason)  # noqa: E731 (tf.nn.relu_3: Keras numbers op layers)
    assert {group.layers[0]: (group.removed, unnumbered(group.reason)) for group in plan.groups} == {
        # The grouped convolution mixes channels within groups: it produces no group of its own.
        "after_grouped": (0, "transposed (Conv2DTranspose) uses them as a whole"),
        "after_transposed": (0, "tf.nn.relu (TFOpLambda) uses them as a whole"),
        "before_op": (0, "to_sequence (Reshape) uses them as a whole"),  # a Reshape that moves the channels
        "conv1d": (3, ""),
        "classifier": (0, "the model's output (the classifier's classes)"),
    }
