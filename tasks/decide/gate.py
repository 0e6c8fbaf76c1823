"""The sweep's accuracy gate, as pure functions: which deployable files may be promoted, and which one is.

A candidate is one file of one target: the pruned Keras .h5 or one of its TFLite exports. It is
judged by its own accuracy, measured on the file itself (in the interpreter for a TFLite file),
against the baseline Keras model's.
"""

from __future__ import annotations

from pruneflow.tasks.libs.outcome import Deployable, TargetResult
from pruneflow.tasks.specs.config import SweepConfig

EPSILON = 1e-9  # a result exactly on a bound passes, whatever the float rounding
Candidate = tuple[TargetResult, Deployable]


def candidates(results: list[TargetResult]) -> list[Candidate]:
    """Every pruned file of every target, in target order, then format order."""
    return [(result, file) for result in results for file in result.deployables if file.model == "pruned"]


def accuracy_drop(result: TargetResult, file: Deployable) -> float:
    """The baseline's test accuracy minus the file's, in points."""
    return 100.0 * (result.baseline.accuracy - file.accuracy)


def gate_problem(result: TargetResult, file: Deployable, gate: SweepConfig) -> str | None:
    """Why this file may not be promoted, or None when it passes the gate."""
    if result.target < gate.min_sparsity - EPSILON and not result.channel_fraction:  # channels: a gain in speed
        return f"sparsity {result.target} is below min_sparsity {gate.min_sparsity}"
    if accuracy_drop(result, file) > gate.max_accuracy_drop + EPSILON:
        return f"accuracy dropped {accuracy_drop(result, file):.2f} points (max_accuracy_drop {gate.max_accuracy_drop})"
    return None


def choose(results: list[TargetResult], gate: SweepConfig) -> Candidate | None:
    """The smallest file (zip-deflated) among those that pass the gate; on a tie the more accurate,
    then the sparser target, then the one with fewer channels, then the earlier format; None if
    none passes."""
    passing = [(i, c) for i, c in enumerate(candidates(results)) if gate_problem(*c, gate) is None]
    best = min(passing, key=lambda item: (item[1][1].zip_bytes, -item[1][1].accuracy, -item[1][0].target,
                                          -item[1][0].channel_fraction, item[0]), default=None)
    return best[1] if best else None


def best_candidate(results: list[TargetResult]) -> Candidate | None:
    """The most accurate file, then the smallest: what to report when nothing passes."""
    return min(candidates(results), key=lambda c: (-c[1].accuracy, c[1].zip_bytes), default=None)


def pareto_front(results: list[TargetResult]) -> list[Candidate]:
    """The pruned files that no other one beats on both test accuracy and zip-deflated size (another at
    least as accurate and at most as large, better in one), smallest first. The gate's choice, the
    smallest file within it, is always one of them."""
    files = candidates(results)

    def beaten(file: Deployable) -> bool:
        return any(
            other.accuracy >= file.accuracy and other.zip_bytes <= file.zip_bytes
            and (other.accuracy > file.accuracy or other.zip_bytes < file.zip_bytes)
            for _, other in files
        )

    return sorted(((r, f) for r, f in files if not beaten(f)), key=lambda c: (c[1].zip_bytes, -c[1].accuracy))
