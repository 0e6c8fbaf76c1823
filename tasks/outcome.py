"""What pruning a baseline to one schedule produced: a run's result, and each target's in a sweep."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, computed_field

from tasks.config import Schedule
from tasks.evaluate import Evaluation
from tasks.prune import TrainedModel
from tasks.sanity import SanityReport
from tasks.size import SizeReport


class PruningOutcome(BaseModel):
    """A pruned model against its baseline: what a run, or one target of a sweep, produced."""

    model_config = ConfigDict(frozen=True)

    pruned_model: Path
    schedule: Schedule
    baseline: Evaluation
    pruned: Evaluation
    sanity: SanityReport
    sizes: SizeReport
    training: TrainedModel

    @computed_field
    @property
    def accuracy_change(self) -> float:
        """Pruned minus baseline test accuracy, in points (percent)."""
        return 100.0 * (self.pruned.accuracy - self.baseline.accuracy)

    @computed_field
    @property
    def measured_sparsity(self) -> float:
        """Zeros over all prunable weights of the pruned model."""
        size = sum(t.size for t in self.sanity.tensors)
        return sum(t.zeros for t in self.sanity.tensors) / size if size else 0.0


class TargetResult(PruningOutcome):
    """What pruning to one target sparsity of a sweep gave, against the baseline."""

    target: float
