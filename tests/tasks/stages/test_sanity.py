"""The sanity check measures the shipped model and names every layer that missed its target."""

import json

import numpy as np
import pytest

from pruneflow.tasks.core.errors import PruneflowError
from pruneflow.tasks.libs.artifacts import SanityReport
from pruneflow.tasks.libs.models import ModelFile, load_model, save_model
from pruneflow.tasks.libs.selection import LayerPlan, plan_for
from pruneflow.tasks.libs.sparsity import measure_tensor
from pruneflow.tasks.stages.prune_train import train_pruned
from pruneflow.tasks.stages.sanity_check import check_sparsity, measure_sparsity, require_target_reached
from pruneflow.tasks.stages.strip import strip_model
from tests.helpers.data import IMAGE_SIZE
from tests.helpers.models import PRUNABLE_KERNELS


def check(variant, folder, target):
    config = variant.config
    schedule = variant.schedule.model_copy(update={"target_sparsity": target})
    return check_sparsity(folder, variant.stripped, schedule, config.training_spec, tolerance=0.01)


def test_every_model_shape_and_format_passes_with_each_kernel_measured(pruned_variant, tmp_path):
    report = check(pruned_variant, tmp_path, 0.5)
    assert len(report.tensors) == PRUNABLE_KERNELS and all(t.weight == "kernel" for t in report.tensors)
    assert all(abs(t.sparsity - 0.5) <= 0.01 for t in report.tensors), report.table()
    if pruned_variant.kind == "nested":
        assert any(t.layer.startswith("backbone/") for t in report.tensors)  # measured inside the nested model
    assert json.loads((tmp_path / "sanity.json").read_text())["tensors"] == report.model_dump(mode="json")["tensors"]
    # Every other tensor is listed with its group: the biases, which TFMOT never prunes.
    assert {(t.weight, t.group) for t in report.dense} == {("bias", "cannot_prune")}
    assert report.params()["pruned"] + report.params()["cannot_prune"] == load_model(pruned_variant.stripped.model).count_params()
    with pytest.raises(PruneflowError, match=f"{PRUNABLE_KERNELS} of {PRUNABLE_KERNELS} pruned tensors .* missed"):
        check(pruned_variant, tmp_path / "stricter", 0.8)


def nested_model(training_flag):
    """A base model nested in an outer one, called with `training=training_flag`."""
    from pruneflow.tasks.core.runtime import keras

    keras.utils.set_random_seed(0)
    base = keras.Sequential(
        [keras.Input(shape=(IMAGE_SIZE, IMAGE_SIZE, 3)), keras.layers.Conv2D(4, 3, activation="relu", name="conv"),
         keras.layers.Flatten(), keras.layers.Dense(8, activation="relu", name="dense")],
        name="base",
    )
    inputs = keras.Input(shape=(IMAGE_SIZE, IMAGE_SIZE, 3))
    features = base(inputs, training=training_flag) if training_flag is not None else base(inputs)
    outputs = keras.layers.Dense(2, activation="softmax", name="head")(features)
    return keras.Model(inputs, outputs)


def prune_and_measure(model, tiny_config, tiny_prepared, tmp_path) -> SanityReport:
    baseline = ModelFile.of(save_model(model, tmp_path / "nested.h5"))
    spec = tiny_config.training_spec
    schedule = tiny_config.pruning.model_copy(update={"end_step": spec.steps_per_epoch(40) * spec.epochs})
    for folder in ("prune", "strip"):
        (tmp_path / folder).mkdir()
    trained = train_pruned(tmp_path / "prune", tmp_path / "work", tiny_prepared, baseline, schedule, spec)
    stripped = strip_model(tmp_path / "strip", trained, tiny_prepared)
    model = load_model(stripped.model)
    return measure_sparsity(model, plan_for(model, schedule, spec, stripped.model), expected=0.5, tolerance=0.01)


def test_nested_base_model_is_measured_layer_by_layer(tiny_config, tiny_prepared, tmp_path):
    report = prune_and_measure(nested_model(None), tiny_config, tiny_prepared, tmp_path)
    assert [(t.layer, t.weight) for t in report.tensors] == [
        ("base/conv", "kernel"), ("base/dense", "kernel"), ("head", "kernel"),
    ]
    assert all(t.passed for t in report.tensors), report.table()
    require_target_reached(report, tmp_path / "pruned.h5")


def test_base_called_with_training_false_is_caught_and_named(tiny_config, tiny_prepared, tmp_path):
    report = prune_and_measure(nested_model(False), tiny_config, tiny_prepared, tmp_path)
    by_layer = {t.layer: t for t in report.tensors}
    assert by_layer["base/conv"].sparsity == 0.0 and not by_layer["base/conv"].passed
    assert by_layer["head"].passed
    with pytest.raises(PruneflowError) as error:
        require_target_reached(report, tmp_path / "pruned.h5")
    message = str(error.value)
    assert "2 of 3 pruned tensors" in message
    assert "base/conv kernel at 0.0000" in message and "base/dense kernel at 0.0000" in message
    assert "training=False" in message


def kernel_with_zeros(zeros: int, size: int = 1000):
    import numpy as np

    values = np.arange(1, size + 1, dtype="float32").reshape(size // 10, 10)
    values.flat[:zeros] = 0
    return values


def test_tolerance_is_honoured_both_ways():
    plan = LayerPlan(layers=[])
    for zeros, passed in ((800, True), (809, True), (791, True), (811, False), (789, False)):
        measured = measure_tensor("l", "kernel", kernel_with_zeros(zeros), 0.8, 0.01, plan)
        assert measured.passed is passed, (zeros, measured)


def test_a_small_tensor_passes_at_tfmots_rounding_of_the_target():
    # 16 weights at 0.7: TFMOT keeps round(16 * 0.3) = 5, so 11 zeros (0.6875, 0.0125 from 0.7).
    plan = LayerPlan(layers=[])
    values = kernel_with_zeros(11, 20).reshape(-1)[:16].reshape(4, 4)
    assert measure_tensor("l", "kernel", values, 0.7, 0.01, plan).passed
    values.flat[11] = 0  # a twelfth zero: 0.75, one more than TFMOT leaves
    assert not measure_tensor("l", "kernel", values, 0.7, 0.01, plan).passed


@pytest.mark.parametrize("size, target, zeros", [(5, 0.9, 4), (25, 0.9, 22), (10, 0.99, 9), (1000, 0.8, 800)])
def test_the_expected_zeros_are_tfmots_own_count(size, target, zeros, tiny_config, tmp_path):
    """TFMOT keeps max(round(size * (1 - target)), 1) weights, in float32: measured on a real
    prune_low_magnitude wrapper, and what the check expects."""
    from pruneflow.tasks.core.runtime import keras, tfmot
    from pruneflow.tasks.libs.sparsity import tfmot_zeros

    assert tfmot_zeros(size, target) == zeros
    layer = keras.layers.Dense(size, use_bias=False, kernel_initializer="glorot_uniform")
    wrapped = keras.Sequential([keras.Input((1,)), tfmot.sparsity.keras.prune_low_magnitude(
        layer, pruning_schedule=tfmot.sparsity.keras.ConstantSparsity(target, 0, frequency=1))])
    wrapped.compile("sgd", "mse")
    wrapped.fit(np.ones((1, 1)), np.ones((1, size)), callbacks=[tfmot.sparsity.keras.UpdatePruningStep()], verbose=0)
    kernel = tfmot.sparsity.keras.strip_pruning(wrapped).layers[0].kernel.numpy()
    assert kernel.size - np.count_nonzero(kernel) == zeros
    assert measure_tensor("l", "kernel", kernel, target, 0.0, LayerPlan(layers=[])).passed


def test_model_without_prunable_tensors_is_refused(tmp_path):
    with pytest.raises(PruneflowError, match="no pruned weight tensor"):
        require_target_reached(SanityReport(folder=tmp_path, expected=0.5, tolerance=0.01, tensors=[]), tmp_path / "m.h5")
