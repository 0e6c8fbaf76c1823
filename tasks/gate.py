"""The sweep's accuracy gate, as pure functions: which targets may be promoted, and which one is."""

from __future__ import annotations

from tasks.config import SweepConfig
from tasks.outcome import TargetResult

EPSILON = 1e-9  # a result exactly on a bound passes, whatever the float rounding


def gate_problem(result: TargetResult, gate: SweepConfig) -> str | None:
    """Why `result` may not be promoted, or None when it passes the gate."""
    if result.target < gate.min_sparsity - EPSILON:
        return f"sparsity {result.target} is below min_sparsity {gate.min_sparsity}"
    if -result.accuracy_change > gate.max_accuracy_drop + EPSILON:
        return f"accuracy dropped {-result.accuracy_change:.2f} points (max_accuracy_drop {gate.max_accuracy_drop})"
    return None


def choose(results: list[TargetResult], gate: SweepConfig) -> TargetResult | None:
    """The smallest model (zip-deflated) among those that pass the gate, the sparser on a tie;
    None if none passes."""
    passing = [result for result in results if gate_problem(result, gate) is None]
    return min(passing, key=lambda result: (result.sizes.pruned.zip_bytes, -result.target), default=None)


def best_candidate(results: list[TargetResult]) -> TargetResult | None:
    """The most accurate result, then the smallest: what to report when nothing passes."""
    return min(results, key=lambda result: (-result.pruned.accuracy, result.sizes.pruned.zip_bytes), default=None)
