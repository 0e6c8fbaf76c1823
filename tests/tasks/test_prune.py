"""Prune-training and stripping on tiny real data."""

import json

import pytest

from tasks.config import parse_config
from tasks.dataset import load_split, write_manifest
from tasks.errors import PruneflowError
from tasks.models import load_model
from tasks.prune import strip_wrappers, train_pruned, wrap_for_pruning
from tasks.schedule import resolve_schedule
from tests.helpers import assert_kernels_sparse, assert_same_predictions


@pytest.fixture
def trained(config_dict, tmp_path):
    config = parse_config(config_dict)
    dataset = write_manifest(config.dataset, tmp_path / "prepared")
    schedule = resolve_schedule(config.pruning, config.steps_per_epoch(dataset.counts["train"]), config.training.epochs)
    return config, dataset, train_pruned(config, dataset, schedule, tmp_path / "prune")


def test_prune_training_reaches_the_target_and_records_the_run(trained):
    config, _, result = trained
    wrapped = load_model(result.wrapped_model, pruning_wrappers=True)
    # Every layer is wrapped; only the Conv2D and the two Dense layers have prunable kernels.
    prunable = [layer.layer for layer in wrapped.layers if layer.layer.get_prunable_weights()]
    assert [type(layer).__name__ for layer in prunable] == ["Conv2D", "Dense", "Dense"]
    assert_kernels_sparse(prunable, 0.5)
    history = json.loads(result.history.read_text())
    assert len(history["loss"]) == len(history["val_accuracy"]) == config.training.epochs
    assert result.steps == 5 * 2  # ceil(40 / 8) steps x 2 epochs
    assert list((result.tensorboard_logs / "metrics").glob("events.out.tfevents.*")), "no pruning summaries"


def test_strip_removes_wrappers_and_keeps_predictions(trained, tmp_path):
    config, dataset, result = trained
    images, _ = next(iter(load_split(dataset, "test", config.dataset)))
    stripped = strip_wrappers(result.wrapped_model, images, tmp_path / "pruned.h5")
    assert stripped.max_abs_diff <= 1e-5
    model = load_model(stripped.model)  # no prune_scope needed: no wrapper is left
    assert not any(hasattr(layer, "pruning_step") for layer in model.layers)
    assert_kernels_sparse(model.layers, 0.5)
    assert_same_predictions(load_model(result.wrapped_model, pruning_wrappers=True), model, images)
    assert stripped.model.stat().st_size < result.wrapped_model.stat().st_size  # no masks, no optimizer


def test_unprunable_model_is_refused_with_the_reason(tmp_path):
    from tasks.config import ConstantSchedule
    from tasks.runtime import keras

    class Custom(keras.layers.Layer):
        def call(self, inputs):
            return inputs * 2

    model = keras.Sequential([keras.Input(shape=(4,)), Custom(), keras.layers.Dense(2)])
    schedule = ConstantSchedule(target_sparsity=0.5, end_step=-1)
    with pytest.raises(PruneflowError, match="m.h5: TFMOT cannot prune this model"):
        wrap_for_pruning(model, schedule, tmp_path / "m.h5")
