"""The accuracy gate: both sides of every bound, and which passing model is chosen."""

import pytest

from tasks.config import SweepConfig
from tasks.gate import best_candidate, choose, gate_problem
from tests.helpers import target_result

GATE = SweepConfig(max_accuracy_drop=1.0, min_sparsity=0.5)


def test_a_drop_exactly_at_the_limit_passes_and_just_beyond_fails():
    assert gate_problem(target_result(0.8, accuracy=0.94, zip_bytes=100, baseline_accuracy=0.95), GATE) is None
    assert gate_problem(target_result(0.8, accuracy=0.9399, zip_bytes=100, baseline_accuracy=0.95), GATE) == (
        "accuracy dropped 1.01 points (max_accuracy_drop 1.0)"
    )


def test_a_pruned_model_more_accurate_than_its_baseline_passes():
    assert gate_problem(target_result(0.8, accuracy=0.97, zip_bytes=100, baseline_accuracy=0.95), GATE) is None


def test_min_sparsity_is_inclusive():
    assert gate_problem(target_result(0.5, accuracy=0.95, zip_bytes=100), GATE) is None
    assert gate_problem(target_result(0.49, accuracy=0.95, zip_bytes=100), GATE) == "sparsity 0.49 is below min_sparsity 0.5"


def test_a_zero_tolerance_gate_accepts_only_no_loss():
    strict = SweepConfig(max_accuracy_drop=0.0, min_sparsity=0.0)
    assert gate_problem(target_result(0.5, accuracy=0.95, zip_bytes=100), strict) is None
    assert gate_problem(target_result(0.5, accuracy=0.9499, zip_bytes=100), strict) is not None


def test_the_smallest_passing_model_is_chosen_not_the_sparsest():
    results = [
        target_result(0.5, accuracy=0.95, zip_bytes=300),
        target_result(0.8, accuracy=0.945, zip_bytes=200),
        target_result(0.9, accuracy=0.90, zip_bytes=100),  # smallest, but beyond the gate
    ]
    assert choose(results, GATE).target == 0.8


def test_a_tie_on_size_goes_to_the_sparser_model():
    results = [target_result(0.7, accuracy=0.95, zip_bytes=200), target_result(0.8, accuracy=0.95, zip_bytes=200)]
    assert choose(results, GATE).target == 0.8
    assert choose(list(reversed(results)), GATE).target == 0.8


@pytest.mark.parametrize("results", [[], [target_result(0.3, accuracy=0.95, zip_bytes=100)]])
def test_nothing_is_chosen_when_nothing_passes(results):
    assert choose(results, GATE) is None


def test_the_best_candidate_is_the_most_accurate_then_the_smallest():
    results = [
        target_result(0.9, accuracy=0.80, zip_bytes=100),
        target_result(0.7, accuracy=0.85, zip_bytes=300),
        target_result(0.8, accuracy=0.85, zip_bytes=200),
    ]
    assert best_candidate(results).target == 0.8
    assert best_candidate([]) is None
