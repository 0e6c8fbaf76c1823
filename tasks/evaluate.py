"""Evaluation stages: the baseline before pruning, the stripped model after."""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task
from prefect.cache_policies import NONE

from tasks.config import DatasetConfig
from tasks.dataset import PreparedDataset, load_split
from tasks.models import Evaluation, check_compatible, evaluate, load_model


def evaluate_on_test(model_path: Path, dataset: PreparedDataset, config: DatasetConfig) -> Evaluation:
    """Check the model against the dataset's shape and classes, then evaluate it on test."""
    from tasks.runtime import keras

    keras.backend.clear_session()
    model = load_model(model_path)
    check_compatible(model, model_path, config, len(dataset.classes))
    return evaluate(model, load_split(dataset, "test", config), dataset.counts["test"])


@task(cache_policy=NONE)
def evaluate_baseline(model_path: Path, dataset: PreparedDataset, config: DatasetConfig) -> Evaluation:
    """Test accuracy and loss of the unpruned model."""
    result = evaluate_on_test(model_path, dataset, config)
    get_run_logger().info("Baseline on test: accuracy %.4f, loss %.4f", result.accuracy, result.loss)
    return result


@task(cache_policy=NONE)
def evaluate_pruned(model_path: Path, dataset: PreparedDataset, config: DatasetConfig) -> Evaluation:
    """Test accuracy and loss of the stripped, pruned model."""
    result = evaluate_on_test(model_path, dataset, config)
    get_run_logger().info("Pruned on test: accuracy %.4f, loss %.4f", result.accuracy, result.loss)
    return result
