"""The accuracy gate: both sides of every bound, and which passing file is chosen."""

import pytest

from pruneflow.tasks.decide.gate import best_candidate, candidates, choose, gate_problem, pareto_front
from pruneflow.tasks.specs.config import SweepConfig
from pruneflow.tasks.specs.formats import KERAS
from tests.helpers.models import target_result

GATE = SweepConfig(max_accuracy_drop=1.0, min_sparsity=0.5)


def keras_problem(result, gate=GATE):
    """The gate's verdict on the target's Keras .h5."""
    return gate_problem(result, result.deployable(KERAS), gate)


def test_a_drop_exactly_at_the_limit_passes_and_just_beyond_fails():
    assert keras_problem(target_result(0.8, accuracy=0.94, zip_bytes=100, baseline_accuracy=0.95), GATE) is None
    assert keras_problem(target_result(0.8, accuracy=0.9399, zip_bytes=100, baseline_accuracy=0.95), GATE) == (
        "accuracy dropped 1.01 points (max_accuracy_drop 1.0)"
    )


def test_a_pruned_model_more_accurate_than_its_baseline_passes():
    assert keras_problem(target_result(0.8, accuracy=0.97, zip_bytes=100, baseline_accuracy=0.95), GATE) is None


def test_min_sparsity_is_inclusive():
    assert keras_problem(target_result(0.5, accuracy=0.95, zip_bytes=100), GATE) is None
    assert keras_problem(target_result(0.49, accuracy=0.95, zip_bytes=100), GATE) == "sparsity 0.49 is below min_sparsity 0.5"


def test_a_zero_tolerance_gate_accepts_only_no_loss():
    strict = SweepConfig(max_accuracy_drop=0.0, min_sparsity=0.0)
    assert keras_problem(target_result(0.5, accuracy=0.95, zip_bytes=100), strict) is None
    assert keras_problem(target_result(0.5, accuracy=0.9499, zip_bytes=100), strict) is not None


def test_the_smallest_passing_model_is_chosen_not_the_sparsest():
    results = [
        target_result(0.5, accuracy=0.95, zip_bytes=300),
        target_result(0.8, accuracy=0.945, zip_bytes=200),
        target_result(0.9, accuracy=0.90, zip_bytes=100),  # smallest, but beyond the gate
    ]
    assert choose(results, GATE)[0].target == 0.8


def test_a_tie_on_size_goes_to_the_sparser_model():
    results = [target_result(0.7, accuracy=0.95, zip_bytes=200), target_result(0.8, accuracy=0.95, zip_bytes=200)]
    assert choose(results, GATE)[0].target == 0.8
    assert choose(list(reversed(results)), GATE)[0].target == 0.8


def test_a_tie_on_size_goes_to_the_more_accurate_file_first():
    results = [target_result(0.7, accuracy=0.95, zip_bytes=200), target_result(0.8, accuracy=0.945, zip_bytes=200)]
    assert choose(results, GATE)[0].target == 0.7
    assert choose(results, GATE) in pareto_front(results)  # the gate's choice is on the front


def test_the_front_keeps_every_file_no_other_beats_and_only_those_smallest_first():
    results = [
        target_result(0.5, accuracy=0.96, zip_bytes=300, files={"int8": (0.95, 100, 0.05)}),
        target_result(0.8, accuracy=0.95, zip_bytes=200, files={"int8": (0.94, 100, 0.05)}),
        target_result(0.9, accuracy=0.96, zip_bytes=300, files={"int8": (0.95, 100, 0.05)}),  # 0.5's figures again
        target_result(0.95, accuracy=0.90, zip_bytes=60),
    ]
    front = [(r.target, f.format, f.accuracy, f.zip_bytes) for r, f in pareto_front(results)]
    # 0.8's .h5 (0.95 at 200 B) is beaten by the int8 files (0.95 at 100 B): as accurate, smaller; 0.8's
    # int8 file (0.94 at 100 B) by them too: as small, less accurate. Equal files both stay.
    assert front == [
        (0.95, KERAS, 0.90, 60), (0.5, "int8", 0.95, 100), (0.9, "int8", 0.95, 100),
        (0.5, KERAS, 0.96, 300), (0.9, KERAS, 0.96, 300),
    ]
    assert pareto_front([]) == []


@pytest.mark.parametrize("results", [[], [target_result(0.3, accuracy=0.95, zip_bytes=100)]])
def test_nothing_is_chosen_when_nothing_passes(results):
    assert choose(results, GATE) is None


def test_the_best_candidate_is_the_most_accurate_then_the_smallest():
    results = [
        target_result(0.9, accuracy=0.80, zip_bytes=100),
        target_result(0.7, accuracy=0.85, zip_bytes=300),
        target_result(0.8, accuracy=0.85, zip_bytes=200),
    ]
    assert best_candidate(results)[0].target == 0.8
    assert best_candidate([]) is None


def test_each_file_is_judged_by_its_own_accuracy_and_the_smallest_passing_file_wins():
    results = [
        target_result(0.8, accuracy=0.95, zip_bytes=300, files={
            "float32": (0.95, 280, 0.1), "int8": (0.93, 90, 0.05), "int8_sparse": (0.945, 120, 0.05),
        }),
        target_result(0.9, accuracy=0.92, zip_bytes=200, files={
            "float32": (0.92, 190, 0.1), "int8": (0.92, 60, 0.05), "int8_sparse": (0.92, 70, 0.05),
        }),
    ]
    verdicts = {(r.target, f.format): gate_problem(r, f, GATE) for r, f in candidates(results)}
    assert len(verdicts) == 8  # the Keras .h5 and three TFLite files per target
    assert verdicts[0.8, "int8"] == "accuracy dropped 2.00 points (max_accuracy_drop 1.0)"  # its Keras model passes
    assert verdicts[0.8, KERAS] is None and verdicts[0.8, "int8_sparse"] is None
    assert all(verdicts[0.9, fmt] is not None for fmt in (KERAS, "float32", "int8", "int8_sparse"))
    result, file = choose(results, GATE)
    assert (result.target, file.format, file.zip_bytes) == (0.8, "int8_sparse", 120)
    assert file.accuracy == 0.945 and file.zip_ratio == 40_000 / 120  # against the baseline .h5, zipped


def test_a_tie_on_size_between_formats_goes_to_the_earlier_format():
    results = [target_result(0.8, accuracy=0.95, zip_bytes=100, files={"int8": (0.95, 100, 0.05)})]
    assert choose(results, GATE)[1].format == KERAS
