"""Evaluation stages: the baseline before pruning, the stripped model after, both on the test split."""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task

from tasks.config import DatasetConfig
from tasks.dataset import PreparedDataset, load_split
from tasks.files import write_json
from tasks.models import check_compatible, evaluate, load_model
from tasks.store import ARTIFACT_CACHE, ArtifactStore, StoredArtifact, code_version, stage_key

BASELINE = "evaluate_baseline"
PRUNED = "evaluate_pruned"


class Evaluation(StoredArtifact):
    """A model's figures on the test split (also in the folder's evaluation.json)."""

    accuracy: float
    loss: float
    examples: int


def evaluate_on_test(
    model_path: Path, dataset: PreparedDataset, config: DatasetConfig, out_dir: Path, trusted: bool = True
) -> Evaluation:
    """Check the model against the dataset's shape and classes, evaluate it on test, write the figures."""
    from tasks.runtime import keras

    keras.backend.clear_session()
    model = load_model(model_path, trusted=trusted)
    check_compatible(model, model_path, config, len(dataset.classes))
    accuracy, loss = evaluate(model, load_split(dataset, "test", config))
    result = Evaluation(folder=out_dir, accuracy=accuracy, loss=loss, examples=dataset.counts["test"])
    write_json(out_dir / "evaluation.json", result.model_dump(mode="json", include={"accuracy", "loss", "examples"}))
    return result


def evaluation_key(stage: str, model_digest: str, dataset: PreparedDataset) -> str:
    """Keyed on the model and the data only: the test split is never shuffled or augmented."""
    code = code_version(__name__, "tasks.models", "tasks.dataset")
    return stage_key(stage, code, {"model": model_digest, "dataset": dataset.digest})


def baseline_key(model_digest: str, dataset: PreparedDataset) -> str:
    return evaluation_key(BASELINE, model_digest, dataset)


def pruned_key(model_digest: str, dataset: PreparedDataset) -> str:
    return evaluation_key(PRUNED, model_digest, dataset)


def _evaluate_stage(stage, store, key, model_path, dataset, config, who: str, trusted: bool = True) -> Evaluation:
    result = store.produce(
        stage, key, Evaluation, lambda tmp: evaluate_on_test(model_path, dataset, config, tmp, trusted)
    )
    get_run_logger().info("%s on test: accuracy %.4f, loss %.4f", who, result.accuracy, result.loss)
    return result


@task(cache_policy=ARTIFACT_CACHE, persist_result=True)
def evaluate_baseline(
    store: ArtifactStore, key: str, model_path: Path, dataset: PreparedDataset, config: DatasetConfig,
    trust_custom_code: bool = False,
) -> Evaluation:
    """Test accuracy and loss of the unpruned model (refused if loading it would run code, unless trusted)."""
    return _evaluate_stage(BASELINE, store, key, model_path, dataset, config, "Baseline", trust_custom_code)


@task(cache_policy=ARTIFACT_CACHE, persist_result=True)
def evaluate_pruned(
    store: ArtifactStore, key: str, model_path: Path, dataset: PreparedDataset, config: DatasetConfig
) -> Evaluation:
    """Test accuracy and loss of the stripped, pruned model."""
    return _evaluate_stage(PRUNED, store, key, model_path, dataset, config, "Pruned")
