"""The sanity check measures the shipped model and names every layer that missed its target."""

import pytest

from tasks.config import parse_config
from tasks.dataset import load_split, write_prepared
from tasks.errors import PruneflowError
from tasks.models import save_model
from tasks.prune import strip_wrappers, train_pruned
from tasks.sanity import SanityReport, TensorSparsity, measure_sparsity, require_target_reached
from tasks.schedule import resolve_schedule
from tests.helpers import IMAGE_SIZE


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


def prune_and_measure(model, config_dict, tmp_path) -> SanityReport:
    baseline = save_model(model, tmp_path / "nested.h5")
    config = parse_config({**config_dict, "model": {"baseline": str(baseline)}})
    dataset = write_prepared(config.dataset, tmp_path / "prepared")
    schedule = resolve_schedule(config.pruning, config.steps_per_epoch(dataset.counts["train"]), config.training.epochs)
    trained = train_pruned(config, dataset, schedule, tmp_path / "work", tmp_path / "prune")
    images, _ = next(iter(load_split(dataset, "test", config.dataset)))
    strip_wrappers(trained.wrapped_model, images, tmp_path / "pruned.h5")
    return measure_sparsity(trained.wrapped_model, tmp_path / "pruned.h5", expected=0.5, tolerance=0.01)


def test_nested_base_model_is_measured_layer_by_layer(config_dict, tmp_path):
    report = prune_and_measure(nested_model(None), config_dict, tmp_path)
    assert [(t.layer, t.weight) for t in report.tensors] == [
        ("base/conv", "kernel"), ("base/dense", "kernel"), ("head", "kernel"),
    ]
    assert all(t.passed for t in report.tensors), report.table()
    require_target_reached(report, tmp_path / "pruned.h5")


def test_base_called_with_training_false_is_caught_and_named(config_dict, tmp_path):
    report = prune_and_measure(nested_model(False), config_dict, tmp_path)
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
