"""Stage fixtures: the tiny dataset prepared once, and each model shape and format pruned once."""

from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers.models import MODEL_VARIANTS, train_tiny_baseline


@dataclass(frozen=True)
class Pruned:
    """One model variant through the stages, as plain functions: what the stage tests inspect."""

    kind: str
    config: object  # the RunConfig
    dataset: object  # the PreparedDataset
    baseline: object  # the baseline's ModelFile
    schedule: object
    trained: object  # the TrainedModel
    stripped: object  # the StrippedModel
    folder: Path

    def sanity(self, tolerance: float = 0.02):
        """The stripped model measured against its plan, as the sanity check measures it."""
        from pruneflow.tasks.libs.models import load_model
        from pruneflow.tasks.libs.selection import plan_for
        from pruneflow.tasks.stages.sanity_check import measure_sparsity

        model = load_model(self.stripped.model)
        plan = plan_for(model, self.schedule, self.config.training_spec, self.stripped.model)
        return measure_sparsity(model, plan, self.schedule.final_sparsity, tolerance)


@pytest.fixture(scope="session")
def tiny_config(tiny_data, tiny_baseline, tmp_path_factory):
    from pruneflow.tasks.specs.config import parse_config
    from tests.helpers.data import make_config_dict

    return parse_config(make_config_dict(tiny_data, tiny_baseline, tmp_path_factory.mktemp("unused-outputs")))


@pytest.fixture(scope="session")
def tiny_prepared(tiny_config, tmp_path_factory):
    """The tiny dataset through prepare_dataset's build function."""
    from pruneflow.tasks.libs.dataset import list_dataset
    from pruneflow.tasks.stages.prepare_dataset import write_prepared

    dataset = tiny_config.dataset
    return write_prepared(tmp_path_factory.mktemp("prepared"), list_dataset(dataset), dataset.shape)


@pytest.fixture(scope="session", params=MODEL_VARIANTS, ids=[f"{kind}{suffix}" for kind, suffix in MODEL_VARIANTS])
def pruned_variant(request, tiny_data, tiny_config, tiny_prepared, tmp_path_factory) -> Pruned:
    """A baseline of one model shape, saved in one format, trained, then prune-trained to 0.5 and stripped."""
    from pruneflow.tasks.libs.models import ModelFile
    from pruneflow.tasks.libs.schedule import resolve_schedule
    from pruneflow.tasks.stages.prune_train import train_pruned
    from pruneflow.tasks.stages.strip import strip_model

    kind, suffix = request.param
    folder = tmp_path_factory.mktemp(f"variant-{kind}-{suffix[1:]}")
    baseline = ModelFile.of(train_tiny_baseline(tiny_data, folder / f"baseline{suffix}", kind))
    spec = tiny_config.training_spec
    schedule = resolve_schedule(
        tiny_config.pruning, spec.steps_per_epoch(tiny_prepared.counts["train"]), tiny_config.training.epochs
    )
    (folder / "trained").mkdir()
    trained = train_pruned(folder / "trained", folder / "work", tiny_prepared, baseline, schedule, spec)
    (folder / "stripped").mkdir()
    stripped = strip_model(folder / "stripped", trained, tiny_prepared)
    return Pruned(kind, tiny_config, tiny_prepared, baseline, schedule, trained, stripped, folder)
