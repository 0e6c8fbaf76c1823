"""Selective pruning of the model shapes people ship: layers TFMOT cannot prune stay in, unwrapped
and reported; layers chosen by pattern; per-layer targets; 2:4 and block structure, verified."""

import numpy as np
import pytest

from pruneflow.tasks.core.errors import PruneflowError
from pruneflow.tasks.core.runtime import PruneLowMagnitude
from pruneflow.tasks.libs.models import ModelFile, load_model, save_model
from pruneflow.tasks.libs.pruning import wrap_for_pruning
from pruneflow.tasks.libs.selection import plan_for
from pruneflow.tasks.specs.config import ConstantSchedule, LayerSelection
from pruneflow.tasks.stages.prune_train import train_pruned
from pruneflow.tasks.stages.sanity_check import check_sparsity, measure_sparsity
from pruneflow.tasks.stages.strip import strip_model
from tests.helpers.data import IMAGE_SIZE
from tests.helpers.models import assert_same_predictions

SHAPE = (IMAGE_SIZE, IMAGE_SIZE, 3)


def rescaling_first():
    from pruneflow.tasks.core.runtime import keras

    return keras.Sequential([
        keras.Input(SHAPE), keras.layers.Rescaling(2.0, offset=-1.0, name="to_signed"),
        keras.layers.Conv2D(8, 3, activation="relu", name="conv"), keras.layers.Flatten(),
        keras.layers.Dense(2, activation="softmax", name="head"),
    ])


def mobilenet_backbone():
    """A keras.applications MobileNetV2 (alpha 0.35, weights=None) nested in a Sequential with a new
    head, behind a Resizing layer (MobileNetV2 takes 32 pixels or more)."""
    from pruneflow.tasks.core.runtime import keras

    backbone = keras.applications.MobileNetV2(input_shape=(32, 32, 3), alpha=0.35, include_top=False, weights=None)
    return keras.Sequential([
        keras.Input(SHAPE), keras.layers.Resizing(32, 32, name="resize"), backbone,
        keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(2, activation="softmax", name="head"),
    ])


def depthwise_with_batchnorm():
    from pruneflow.tasks.core.runtime import keras

    inputs = keras.Input(SHAPE)
    x = keras.layers.Conv2D(8, 3, use_bias=False, name="stem")(inputs)
    x = keras.layers.BatchNormalization(name="stem_bn")(x)
    x = keras.layers.DepthwiseConv2D(3, name="dw")(keras.layers.ReLU()(x))
    x = keras.layers.Conv2D(16, 1, name="pointwise")(keras.layers.BatchNormalization(name="dw_bn")(x))
    outputs = keras.layers.Dense(2, activation="softmax", name="head")(keras.layers.GlobalAveragePooling2D()(x))
    return keras.Model(inputs, outputs)


def normalized():
    from pruneflow.tasks.core.runtime import keras

    norm = keras.layers.Normalization(name="norm")
    norm.adapt(np.random.default_rng(0).random((20, *SHAPE), dtype="float32"))
    return keras.Sequential([
        keras.Input(SHAPE), norm, keras.layers.Conv2D(8, 3, activation="relu", name="conv"),
        keras.layers.Flatten(), keras.layers.Dense(8, activation="relu", name="hidden"),
        keras.layers.Dense(2, activation="softmax", name="head"),
    ])


def prune_run(build, tiny_config, tiny_prepared, folder, target=0.5, epochs=2, **layers):
    """The baseline `build()` makes, through prune_train, strip and sanity_check's build functions."""
    from pruneflow.tasks.core.runtime import keras

    keras.backend.clear_session()
    keras.utils.set_random_seed(0)
    training = tiny_config.training.model_copy(update={"epochs": epochs})
    config = tiny_config.model_copy(update={"layers": LayerSelection(**layers), "training": training})
    spec = config.training_spec
    schedule = tiny_config.pruning.model_copy(
        update={"target_sparsity": target, "end_step": spec.steps_per_epoch(tiny_prepared.counts["train"]) * spec.epochs}
    )
    baseline = ModelFile.of(save_model(build(), folder / "baseline.h5"))
    for name in ("trained", "stripped", "sanity"):
        (folder / name).mkdir(parents=True)
    trained = train_pruned(folder / "trained", folder / "work", tiny_prepared, baseline, schedule, spec)
    stripped = strip_model(folder / "stripped", trained, tiny_prepared)
    report = check_sparsity(folder / "sanity", stripped, schedule, spec, tolerance=0.01)
    wrapped = load_model(trained.wrapped_model, pruning_wrappers=True)
    return baseline, wrapped, load_model(stripped.model), report


def wrapped_layers(wrapped) -> list[str]:
    return sorted(layer.layer.name for layer in wrapped.submodules if isinstance(layer, PruneLowMagnitude))


def groups(report) -> dict[str, set[str]]:
    found = {"pruned": {t.layer for t in report.tensors}}
    for tensor in report.dense:
        found.setdefault(tensor.group, set()).add(tensor.layer)
    return found


SHAPES = {
    "rescaling_first": (rescaling_first, {}, {"conv", "head"}, {"to_signed"}),
    "normalization": (normalized, {}, {"conv", "hidden", "head"}, {"norm"}),
    "depthwise_and_batchnorm": (depthwise_with_batchnorm, {}, {"stem", "pointwise", "head"}, {"dw", "stem_bn", "dw_bn"}),
    "excluded_by_pattern": (normalized, {"exclude": ["hid*"]}, {"conv", "head"}, {"norm"}),
}


@pytest.mark.parametrize("shape", SHAPES, ids=list(SHAPES))
def test_each_model_shape_prunes_the_layers_tfmot_can_and_reports_the_others(shape, tiny_config, tiny_prepared, tmp_path):
    build, layers, pruned, cannot = SHAPES[shape]
    baseline, wrapped, stripped, report = prune_run(build, tiny_config, tiny_prepared, tmp_path, **layers)
    assert wrapped_layers(wrapped) == sorted(pruned)
    assert {t.layer for t in report.tensors} == pruned and all(t.passed and t.target == 0.5 for t in report.tensors)
    cannot_prune = {t.layer for t in report.dense if t.group == "cannot_prune" and t.weight != "bias"}
    assert cannot_prune == cannot - {"to_signed"}  # Rescaling holds no weights: no tensor, but a layer of the plan
    assert {layer.path for layer in report.layers if layer.group == "cannot_prune"} == cannot
    by_choice = {(t.layer, t.weight) for t in report.dense if t.group == "dense_by_choice"}
    assert by_choice == ({("hidden", "kernel")} if layers else set())
    if layers:  # the excluded layer's bias was never prunable: it is in the group TFMOT cannot prune
        (bias,) = [t for t in report.dense if t.layer == "hidden" and t.weight == "bias"]
        assert (bias.group, bias.reason) == ("cannot_prune", "TFMOT prunes only kernel of Dense")
    assert all(t.zeros == 0 for t in report.dense if t.weight.endswith("kernel")), "a kernel left dense has zeros"
    untouched = load_model(baseline.path)
    for name in {"norm"} & cannot:  # weights no training changes: bit-identical
        for before, after in zip(untouched.get_layer(name).get_weights(), stripped.get_layer(name).get_weights()):
            np.testing.assert_array_equal(before, after)
    images = np.random.default_rng(1).random((6, *SHAPE), dtype="float32")
    assert_same_predictions(wrapped, stripped, images)


def test_a_mobilenet_v2_backbone_nested_in_a_sequential_is_pruned_layer_by_layer(tiny_config, tiny_prepared, tmp_path):
    # One epoch: the plan and the sanity check are what this is about, and a MobileNetV2's epoch is costly.
    _, wrapped, stripped, report = prune_run(
        mobilenet_backbone, tiny_config, tiny_prepared, tmp_path, epochs=1, keep_first_conv=True
    )
    backbone = stripped.layers[1].name
    assert {t.layer for t in report.tensors} >= {f"{backbone}/block_1_expand", f"{backbone}/Conv_1", "head"}
    assert all(t.passed for t in report.tensors), report.table()
    assert report.layer_counts() == (
        f"{len(report.tensors)} pruned; left dense by choice: Conv2D x1; "
        "left dense: TFMOT cannot prune it: BatchNormalization x52, DepthwiseConv2D x17, Resizing x1"
    )
    reasons = {(t.layer, t.group, t.reason) for t in report.dense}
    assert (f"{backbone}/Conv1", "dense_by_choice", "layers.keep_first_conv") in reasons
    assert (f"{backbone}/block_1_depthwise", "cannot_prune", "TFMOT prunes no weight of DepthwiseConv2D") in reasons
    shares = report.shares()
    assert abs(sum(shares.values()) - 1.0) < 1e-9 and shares["pruned"] > 0.5
    assert sum(report.params().values()) == stripped.count_params()
    images = np.random.default_rng(1).random((4, *SHAPE), dtype="float32")
    assert_same_predictions(wrapped, stripped, images)


def plan(model, path, target=0.5, **layers):
    from pruneflow.tasks.specs.config import ConstantSchedule, TrainingSpec

    spec = TrainingSpec(
        epochs=1, optimizer="adam", learning_rate=1e-3, batch_size=8, shuffle_seed=0, augment=False, seed=0,
        pruning_policy="all_layers", layers=LayerSelection(**layers),
    )
    return plan_for(model, ConstantSchedule(target_sparsity=target, end_step=-1), spec, path)


def test_patterns_match_path_name_or_class_and_overrides_set_per_layer_targets(tmp_path):
    chosen = plan(normalized(), tmp_path / "m.h5", 0.8, include=["Conv2D", "hid*", "head"], keep_classifier=True,
                  sparsity={"hidden": 0.3})
    assert {path: layer.target for path, layer in chosen.pruned.items()} == {"conv": 0.8, "hidden": 0.3}
    assert chosen.of("head").reason == "layers.keep_classifier"
    nested = plan(mobilenet_backbone(), tmp_path / "m.h5", include=["*/block_1_*"])
    assert sorted(nested.pruned) == [f"{nested.layers[1].path.split('/')[0]}/block_1_{part}" for part in ("expand", "project")]


def test_an_exact_path_in_layers_sparsity_wins_over_a_name_shared_with_a_nested_layer(tmp_path):
    from pruneflow.tasks.core.runtime import keras

    inner = keras.Input((8,))
    head = keras.Model(inner, keras.layers.Dense(2, name="dense")(inner), name="head")
    inputs = keras.Input((4,))
    model = keras.Model(inputs, head(keras.layers.Dense(8, name="dense")(inputs)))
    chosen = plan(model, tmp_path / "m.h5", sparsity={"dense": 0.3, "head/dense": 0.6})
    assert {path: layer.target for path, layer in chosen.pruned.items()} == {"dense": 0.3, "head/dense": 0.6}


def test_a_shared_layer_is_planned_and_wrapped_once(tmp_path):
    from pruneflow.tasks.core.runtime import keras

    inputs = keras.Input((4,))
    shared = keras.layers.Dense(4, name="shared")
    model = keras.Model(inputs, keras.layers.Dense(2, name="out")(shared(shared(inputs))))
    chosen = plan(model, tmp_path / "m.h5")
    assert sorted(chosen.pruned) == ["out", "shared"]
    wrapped = wrap_for_pruning(model, chosen, ConstantSchedule(target_sparsity=0.5, end_step=-1), tmp_path / "m.h5")
    assert wrapped_layers(wrapped) == ["out", "shared"]
    images = np.random.default_rng(0).random((3, 4), dtype="float32")
    assert_same_predictions(model, wrapped, images)


def test_patterns_that_match_nothing_are_named(tmp_path):
    with pytest.raises(PruneflowError) as error:
        plan(normalized(), tmp_path / "m.h5", include=["conv", "norm"], exclude=["dens"], sparsity={"head": 0.2})
    message = str(error.value)
    assert "layers.include 'norm' (no layer TFMOT can prune)" in message
    assert "layers.exclude 'dens' (no layer)" in message
    assert "layers.sparsity 'head' (no pruned layer)" in message
    assert "The layers TFMOT can prune: conv, hidden, head" in message
    with pytest.raises(PruneflowError, match="no layer is left to prune"):
        plan(normalized(), tmp_path / "m.h5", exclude=["*"])


def test_layers_that_cannot_take_the_structure_are_named(tmp_path):
    with pytest.raises(PruneflowError, match=r"multiple of 4 .* conv \(Conv2D, kernel \[3, 3, 3, 8\]\).*keep_first_conv"):
        plan(normalized(), tmp_path / "m.h5", m_by_n=(2, 4))
    assert sorted(plan(normalized(), tmp_path / "m.h5", m_by_n=(2, 4), keep_first_conv=True).pruned) == ["head", "hidden"]
    with pytest.raises(PruneflowError, match=r"block_size \[2, 2\] .* conv \(Conv2D.*head \(Dense, kernel \[8, 2\]\)"):
        plan(normalized(), tmp_path / "m.h5", block_size=(2, 2))


def test_a_2_by_4_run_passes_its_structure_check_and_a_tampered_model_fails_it(tiny_config, tiny_prepared, tmp_path):
    _, wrapped, stripped, report = prune_run(normalized, tiny_config, tiny_prepared, tmp_path, keep_first_conv=True, m_by_n=(2, 4))
    assert report.structure == "2:4 (m_by_n)"
    assert {t.layer: (t.sparsity, t.structure_violations) for t in report.tensors} == {"hidden": (0.5, 0), "head": (0.5, 0)}
    kernel = stripped.get_layer("hidden").kernel.numpy()
    groups_of_4 = np.moveaxis(kernel, -2, -1).reshape(-1, 4)
    assert (np.count_nonzero(groups_of_4, axis=1) <= 2).all()  # the structure itself, read independently
    # Move a zero from one group of 4 inputs to the next: the fraction of zeros is unchanged,
    # the structure is not.
    first, second = kernel[0:4, 0], kernel[4:8, 0]
    first[np.flatnonzero(first == 0)[0]] = 0.5
    second[np.flatnonzero(second)[0]] = 0.0
    stripped.get_layer("hidden").kernel.assign(kernel)
    tampered = measure_sparsity(stripped, plan(stripped, tmp_path / "m.h5", keep_first_conv=True, m_by_n=(2, 4)), 0.5, 0.01)
    hidden = next(t for t in tampered.tensors if t.layer == "hidden")
    assert hidden.zeros == next(t for t in report.tensors if t.layer == "hidden").zeros
    assert hidden.structure_violations == 1 and not hidden.passed


def test_a_block_run_passes_its_structure_check_and_a_tampered_model_fails_it(tiny_config, tiny_prepared, tmp_path):
    layers = {"keep_first_conv": True, "keep_classifier": True, "block_size": (4, 3)}  # 8 columns: edge blocks 2 wide
    _, _, stripped, report = prune_run(normalized, tiny_config, tiny_prepared, tmp_path, **layers)
    assert report.structure == "block 4x3"
    (hidden,) = report.tensors
    assert hidden.passed and hidden.structure_violations == 0
    kernel = stripped.get_layer("hidden").kernel.numpy()
    blocks = [kernel[r:r + 4, c:c + 3] for r in range(0, kernel.shape[0], 4) for c in range(0, kernel.shape[1], 3)]
    assert all((b == 0).all() or (b != 0).all() for b in blocks)  # the structure, read independently
    zero_blocks = sum((b == 0).all() for b in blocks)
    assert hidden.blocks_zero == zero_blocks / len(blocks) and abs(zero_blocks / len(blocks) - 0.5) <= 0.01
    row, column = np.argwhere(kernel == 0)[0]
    kernel[row, column] = 0.25  # one weight back in a zero block
    stripped.get_layer("hidden").kernel.assign(kernel)
    tampered = measure_sparsity(stripped, plan(stripped, tmp_path / "m.h5", **layers), 0.5, 0.01)
    assert tampered.tensors[0].structure_violations == 1 and not tampered.tensors[0].passed


def test_a_2_by_4_run_resumed_from_a_checkpoint_keeps_its_structure(tiny_config, tiny_prepared, tmp_path, monkeypatch):
    from pruneflow.tasks.core.runtime import tf

    monkeypatch.setenv("PRUNEFLOW_INJECT_FAULT", "resource_exhausted@1")
    with pytest.raises(tf.errors.ResourceExhaustedError):
        prune_run(normalized, tiny_config, tiny_prepared, tmp_path / "a", keep_first_conv=True, m_by_n=(2, 4))
    monkeypatch.delenv("PRUNEFLOW_INJECT_FAULT")
    work = tmp_path / "a" / "work"
    assert (work / "checkpoint.h5").is_file()
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "work").symlink_to(work)  # the second attempt finds the first one's checkpoint
    _, _, _, report = prune_run(normalized, tiny_config, tiny_prepared, tmp_path / "b", keep_first_conv=True, m_by_n=(2, 4))
    assert all(t.structure_violations == 0 and t.passed for t in report.tensors), report.table()


def test_wrapping_saving_loading_and_stripping_without_training_leaves_every_weight_bit_identical(tmp_path):
    """The plan's unwrapped layers and the wrapped ones' weights survive the clone, the .h5 of the
    wrapped model (as prune-training saves it) and stripping, compared with the baseline file."""
    from pruneflow.tasks.core.runtime import keras, tfmot

    baseline = save_model(mobilenet_backbone(), tmp_path / "baseline.h5")
    model = load_model(baseline)
    chosen = plan(model, baseline, keep_first_conv=True)
    wrapped = wrap_for_pruning(model, chosen, ConstantSchedule(target_sparsity=0.5, end_step=-1), baseline)
    save_model(wrapped, tmp_path / "wrapped.h5")
    keras.backend.clear_session()
    stripped = tfmot.sparsity.keras.strip_pruning(load_model(tmp_path / "wrapped.h5", pruning_wrappers=True))
    before = load_model(baseline).get_weights()
    after = stripped.get_weights()
    assert len(before) == len(after)
    for a, b in zip(before, after):
        np.testing.assert_array_equal(a, b)
