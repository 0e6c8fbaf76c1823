"""The sanity check measures the shipped model and names every layer that missed its target."""

import json

import pytest

from tasks.errors import PruneflowError
from tasks.models import ModelFile, save_model
from tasks.prune import strip_model, train_pruned
from tasks.sanity import check_sparsity, measure_sparsity, require_target_reached
from tasks.sparsity import SanityReport, TensorSparsity
from tests.helpers import IMAGE_SIZE, PRUNABLE_KERNELS


def test_every_model_shape_and_format_passes_with_each_kernel_measured(pruned_variant, tmp_path):
    report = check_sparsity(tmp_path, pruned_variant.trained, pruned_variant.stripped, expected=0.5, tolerance=0.01)
    assert len(report.tensors) == PRUNABLE_KERNELS and all(t.weight == "kernel" for t in report.tensors)
    assert all(abs(t.sparsity - 0.5) <= 0.01 for t in report.tensors), report.table()
    if pruned_variant.kind == "nested":
        assert any(t.layer.startswith("backbone/") for t in report.tensors)  # measured inside the nested model
    assert json.loads((tmp_path / "sanity.json").read_text())["tensors"] == report.model_dump(mode="json")["tensors"]
    with pytest.raises(PruneflowError, match=f"{PRUNABLE_KERNELS} of {PRUNABLE_KERNELS} prunable tensors .* missed"):
        check_sparsity(tmp_path / "stricter", pruned_variant.trained, pruned_variant.stripped, expected=0.8, tolerance=0.01)


def nested_model(training_flag):
    """A base model nested in an outer one, called with `training=training_flag`."""
    from tasks.runtime import keras

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
    return measure_sparsity(trained.wrapped_model, stripped.model, expected=0.5, tolerance=0.01)


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
    assert "2 of 3 prunable tensors" in message
    assert "base/conv kernel at 0.0000" in message and "base/dense kernel at 0.0000" in message
    assert "training=False" in message


def tensor(sparsity, expected=0.8, tolerance=0.01) -> TensorSparsity:
    return TensorSparsity(
        layer="l", weight="kernel", size=1000, zeros=int(sparsity * 1000), sparsity=sparsity,
        passed=abs(sparsity - expected) <= tolerance,
    )


def test_tolerance_is_honoured_both_ways(tmp_path):
    close = SanityReport(folder=tmp_path, expected=0.8, tolerance=0.01, tensors=[tensor(0.8009), tensor(0.795)])
    require_target_reached(close, tmp_path / "m.h5")
    far = SanityReport(folder=tmp_path, expected=0.8, tolerance=0.01, tensors=[tensor(0.8009), tensor(0.78)])
    with pytest.raises(PruneflowError, match="1 of 2 prunable tensors"):
        require_target_reached(far, tmp_path / "m.h5")


def test_model_without_prunable_tensors_is_refused(tmp_path):
    with pytest.raises(PruneflowError, match="no prunable weight tensor"):
        require_target_reached(SanityReport(folder=tmp_path, expected=0.5, tolerance=0.01, tensors=[]), tmp_path / "m.h5")
