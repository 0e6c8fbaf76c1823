"""Champion against challenger: the decision at each threshold, and the champion measured for real."""

import pytest

from pruneflow.tasks.decide.champion import KEPT, challenge
from pruneflow.tasks.libs.artifacts import ChampionEvaluation
from pruneflow.tasks.specs.config import SweepConfig
from tests.helpers.models import target_result

MACHINE = "test machine"


def champion(accuracy=0.95, zip_bytes=1000, latency_ms=1.0, machine=MACHINE) -> ChampionEvaluation:
    return ChampionEvaluation(
        folder=".", version="20261129T020000-run-0-abcdef", format="int8", accuracy=accuracy, zip_bytes=zip_bytes, latency_ms=latency_ms, machine=machine,
        examples=100,
    )


def challenger(accuracy=0.95, zip_bytes=900, latency_ms=1.0):
    result = target_result(0.8, 0.95, 5000, files={"int8": (accuracy, zip_bytes, latency_ms)})
    return result, result.deployable("int8")


def test_without_a_champion_the_gates_choice_is_promoted_and_without_a_choice_nothing_is():
    decision = challenge(challenger(), None, SweepConfig())
    assert decision.promote and decision.verdict == "promoted (no champion yet)" and decision.why == "the gate's choice"
    nothing = challenge(None, champion(), SweepConfig())
    assert not nothing.promote and nothing.why == "no file passed the gate"


@pytest.mark.parametrize("accuracy, promoted", [(0.945, True), (0.9449, False), (0.96, True)])
def test_accuracy_may_drop_by_the_absolute_threshold_and_no_more(accuracy, promoted):
    gate = SweepConfig(champion_max_accuracy_loss=0.5, champion_max_relative_accuracy_loss=0.5)
    decision = challenge(challenger(accuracy=accuracy), champion(accuracy=0.95), gate)
    assert decision.promote is promoted, decision.reasons
    # 900 B against 1,000 at the same speed: smaller, not faster.
    assert decision.why == ("held its accuracy, smaller" if promoted else "lost too much accuracy")


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
    faster = challenge(challenger(zip_bytes=1000, latency_ms=0.7), champion(latency_ms=1.0), gate)
    assert faster.promote and faster.why == "held its accuracy, faster"
    slower = challenge(challenger(zip_bytes=1000, latency_ms=0.85), champion(latency_ms=1.0), gate)
    assert not slower.promote and slower.why == "not smaller, not faster"
    other = champion(latency_ms=1.0, machine="another machine")
    decision = challenge(challenger(zip_bytes=1000, latency_ms=0.5), other, gate)
    assert not decision.promote and not any("ms against" in reason for reason in decision.reasons)
    assert decision.why == "not smaller"  # the speed not compared


def test_a_decision_superseded_by_another_promotion_keeps_the_champion_and_says_why():
    decision = challenge(challenger(zip_bytes=500), champion(), SweepConfig())
    assert decision.promote and decision.verdict == "promoted"
    superseded = decision.superseded("20261129T030000-run-9-fedcba")
    assert not superseded.promote and superseded.verdict == KEPT
    assert superseded.reasons[:-1] == decision.reasons
    assert "another run promoted 20261129T030000-run-9-fedcba meanwhile" in superseded.reasons[-1]
    assert superseded.why == "another run promoted 20261129T030000-run-9-fedcba meanwhile"
    assert decision.superseded("").why == "its champion was unpromoted meanwhile"


def test_the_champion_is_what_promoted_points_to_and_none_when_it_is_gone(tmp_path):
    import json

    from pruneflow.tasks.core.layout import OutputLayout
    from pruneflow.tasks.decide.champion import current_champion

    layout = OutputLayout(root=tmp_path)
    assert current_champion(layout) is None  # before the first promotion
    version = layout.promoted_versions / "v1"
    version.mkdir(parents=True)
    (version / "model.tflite").write_bytes(b"tflite")
    (version / "model.h5").write_bytes(b"h5")
    (version / "metrics.json").write_text(json.dumps({"file": "model.tflite", "format": "int8"}))
    layout.promoted.symlink_to(version.relative_to(tmp_path), target_is_directory=True)
    found = current_champion(layout)
    assert (found.file.path, found.format, found.version) == (version / "model.tflite", "int8", "v1")
    (version / "metrics.json").write_text(json.dumps({"target": 0.8}))  # promoted before TFLite files existed
    assert (current_champion(layout).file.path.name, current_champion(layout).format) == ("model.h5", "keras_h5")
    (version / "metrics.json").unlink()
    assert current_champion(layout) is None


def test_a_champion_made_for_other_images_is_a_named_user_error(tiny_prepared, tmp_path):
    from pruneflow.tasks.core.errors import PruneflowError
    from pruneflow.tasks.core.runtime import keras, tf
    from pruneflow.tasks.libs.artifacts import Champion
    from pruneflow.tasks.libs.models import ModelFile
    from pruneflow.tasks.specs.config import LatencySpec
    from pruneflow.tasks.stages.evaluate_champion import measure_champion

    model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Flatten(), keras.layers.Dense(2, activation="softmax")])
    path = tmp_path / "model.tflite"
    path.write_bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())
    champion = Champion(file=ModelFile.of(path), format="float32", version="v1")
    with pytest.raises(PruneflowError, match=r"the champion .*model.tflite cannot be evaluated on this run's test split"):
        measure_champion(tmp_path, champion, tiny_prepared, 8, LatencySpec(runs=5, warmup=0, threads=1), MACHINE)
