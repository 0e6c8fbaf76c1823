"""Champion against challenger: the decision at each threshold, and the champion measured for real."""

import pytest

from tasks.champion import ChampionEvaluation, challenge
from tasks.config import SweepConfig
from tests.helpers import target_result

MACHINE = "test machine"


def champion(accuracy=0.95, zip_bytes=1000, latency_ms=1.0, machine=MACHINE) -> ChampionEvaluation:
    return ChampionEvaluation(
        folder=".", format="int8", accuracy=accuracy, zip_bytes=zip_bytes, latency_ms=latency_ms, machine=machine,
        examples=100,
    )


def challenger(accuracy=0.95, zip_bytes=900, latency_ms=1.0):
    result = target_result(0.8, 0.95, 5000, files={"int8": (accuracy, zip_bytes, latency_ms)})
    return result, result.deployable("int8")


def test_without_a_champion_the_gates_choice_is_promoted_and_without_a_choice_nothing_is():
    decision = challenge(challenger(), None, SweepConfig())
    assert decision.promote and decision.verdict == "promoted (no champion yet)"
    assert not challenge(None, champion(), SweepConfig()).promote


@pytest.mark.parametrize("accuracy, promoted", [(0.945, True), (0.9449, False), (0.96, True)])
def test_accuracy_may_drop_by_the_absolute_threshold_and_no_more(accuracy, promoted):
    gate = SweepConfig(champion_max_accuracy_loss=0.5, champion_max_relative_accuracy_loss=0.5)
    decision = challenge(challenger(accuracy=accuracy), champion(accuracy=0.95), gate)
    assert decision.promote is promoted, decision.reasons


@pytest.mark.parametrize("accuracy, promoted", [(0.9405, True), (0.9404, False)])
def test_accuracy_may_drop_by_the_relative_threshold_and_no_more(accuracy, promoted):
    gate = SweepConfig(champion_max_accuracy_loss=5.0, champion_max_relative_accuracy_loss=0.01)  # 1% of 0.95: 0.95 points
    assert challenge(challenger(accuracy=accuracy), champion(accuracy=0.95), gate).promote is promoted


@pytest.mark.parametrize("zip_bytes, promoted", [(1000, False), (999, False), (901, False), (899, True)])
def test_the_challenger_must_be_smaller_by_both_size_thresholds(zip_bytes, promoted):
    gate = SweepConfig(champion_min_size_gain=0.0, champion_min_size_gain_bytes=0, champion_min_speedup=0.99)
    assert challenge(challenger(zip_bytes=zip_bytes), champion(), gate).promote is (zip_bytes < 1000)
    stricter = SweepConfig(champion_min_size_gain=0.05, champion_min_size_gain_bytes=100, champion_min_speedup=0.99)
    assert challenge(challenger(zip_bytes=zip_bytes), champion(), stricter).promote is promoted


def test_a_faster_challenger_of_the_same_size_wins_but_only_against_a_champion_timed_on_this_kind_of_machine():
    gate = SweepConfig(champion_min_speedup=0.2)
    assert challenge(challenger(zip_bytes=1000, latency_ms=0.7), champion(latency_ms=1.0), gate).promote
    assert not challenge(challenger(zip_bytes=1000, latency_ms=0.85), champion(latency_ms=1.0), gate).promote
    other = champion(latency_ms=1.0, machine="another machine")
    decision = challenge(challenger(zip_bytes=1000, latency_ms=0.5), other, gate)
    assert not decision.promote and not any("ms against" in reason for reason in decision.reasons)
