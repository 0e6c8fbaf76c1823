"""Promotion: a whole model or the previous one, under a lock, and after a crash at any step."""

import json
import logging
import re
import threading
import time
import uuid
from pathlib import Path

import pytest
from filelock import FileLock

from pruneflow.tasks.core.layout import OutputLayout
from pruneflow.tasks.decide.champion import Decision
from pruneflow.tasks.decide.promote import (
    LINK_PREFIX,
    Journal,
    promote,
    promote_model,
    record,
    recover,
    remove_unlinked,
    switch_link,
    write_version,
)
from pruneflow.tasks.libs.artifacts import ChampionEvaluation
from pruneflow.tasks.specs.config import RegistryConfig, parse_config
from pruneflow.tasks.specs.formats import KERAS, KERAS3
from pruneflow.tasks.unkeyed.faults import FAULT_ENV, POINTS
from tests.helpers.data import make_config_dict
from tests.helpers.models import target_result

PROMOTION_POINTS = [point for point in POINTS if point.startswith("promote:")]  # between a promotion's steps


@pytest.fixture
def config(tmp_path):
    """A valid run config. A promotion only copies it into the version folder, so its dataset and
    baseline need not exist (and no baseline is trained for these tests)."""
    return parse_config(make_config_dict(tmp_path / "data", tmp_path / "baseline.h5", tmp_path / "outputs"))


@pytest.fixture
def setting(config, tmp_path):
    """The layout under a fresh output root, and two candidate models with different bytes."""
    layout = OutputLayout(root=tmp_path / "outputs")
    models = []
    for target in (0.7, 0.9):
        model = tmp_path / f"strip-{target}" / "pruned.h5"
        model.parent.mkdir()
        model.write_bytes(f"model pruned to {target}".encode())
        result = target_result(target, accuracy=0.95, zip_bytes=int(1000 * (1 - target)), model=model)
        models.append((result, result.deployable(KERAS)))
    return layout, config, models


@pytest.fixture(scope="module")
def registry_store(tmp_path_factory) -> str:
    """A real MLflow tracking store and model registry in one SQLite file, as the MLflow server of
    a deployment keeps them, used without a server; one for the module, since creating its tables
    takes seconds."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.fixture
def registry(registry_store, tmp_path) -> RegistryConfig:
    """An experiment and a registered model of the test's own in that store, the experiment's
    artifacts under tmp_path."""
    from pruneflow.tasks.decide.registry import client

    name = f"promote-{uuid.uuid4().hex[:8]}"
    spec = RegistryConfig(tracking_uri=registry_store, experiment=name, model_name=name)
    client(spec).create_experiment(name, artifact_location=(tmp_path / "mlflow-artifacts").as_uri())
    return spec


def registered(spec: RegistryConfig) -> dict[str, str | None]:
    """Each registered version of the model (its number as a string: a SQL store gives an int, a
    server a string), with its `pruneflow.rolled_back` tag (None: none)."""
    from pruneflow.tasks.decide.registry import client

    versions = client(spec).search_model_versions(f"name = '{spec.model_name}'")
    return {str(v.version): v.tags.get("pruneflow.rolled_back") for v in versions}


def current(layout: OutputLayout) -> str | None:
    """The version folder promoted now: the champion a challenger is measured against."""
    return layout.promoted.resolve().name if layout.promoted.is_symlink() else None


def promoted_bytes(layout: OutputLayout) -> bytes:
    return (layout.promoted / "model.h5").read_bytes()


def killed_after_the_switch(chosen, config, flow_run_id: str, layout: OutputLayout) -> Path:
    """What a promotion killed between switching the link and its commit leaves (no registry): its
    journal, its version folder, and `promoted` pointing at that folder. The version folder."""
    previous = layout.promoted.resolve() if layout.promoted.is_symlink() else None
    journal = record(layout, Journal(flow_run_id=flow_run_id, previous=previous and previous.name))
    version = write_version(chosen, config, flow_run_id, layout)
    record(layout, journal.model_copy(update={"version": version.name}))
    switch_link(layout, version)
    return version


def test_promotion_copies_the_model_its_config_and_figures(setting):
    layout, config, (first, _) = setting
    assert promote(first, config, "run-1", layout, champion=current(layout)) is None  # not superseded
    link = layout.promoted
    assert link.is_symlink()
    assert promoted_bytes(layout) == first[0].pruned_model.read_bytes()
    assert json.loads((link / "config.json").read_text())["pruning"]["target_sparsity"] == 0.7
    metrics = json.loads((link / "metrics.json").read_text())
    assert metrics["flow_run_id"] == "run-1" and metrics["target"] == 0.7 and metrics["zip_bytes"] == 300
    assert [entry.name for entry in layout.promoted_versions.iterdir()] == [link.resolve().name]
    assert not layout.promotion_journal.exists()  # committed


def test_a_crash_before_the_switch_keeps_the_previous_model_and_the_next_promotion_cleans_up(setting):
    layout, config, (first, second) = setting
    promote(first, config, "run-1", layout, champion=current(layout))
    orphan = write_version(second, config, "run-2", layout)  # then the process dies: no switch
    (layout.promoted_versions / ".tmp-half-written").mkdir()  # a version killed while being written
    assert promoted_bytes(layout) == first[0].pruned_model.read_bytes()  # readers still see the whole old model

    previous = layout.promoted.resolve()
    promote(second, config, "run-3", layout, champion=current(layout))
    assert promoted_bytes(layout) == second[0].pruned_model.read_bytes()
    # The version it replaced stays, for readers that resolved the link before the switch.
    assert set(layout.promoted_versions.iterdir()) == {layout.promoted.resolve(), previous}
    assert not orphan.exists()


def test_a_crash_after_the_switch_leaves_the_new_model_whole_and_a_spare_link_is_removed(setting):
    layout, config, (first, second) = setting
    promote(first, config, "run-1", layout, champion=current(layout))
    old = layout.promoted.resolve()
    switch_link(layout, write_version(second, config, "run-2", layout))  # then the process dies: no clean-up
    (layout.root / f"{LINK_PREFIX}dead00").symlink_to(old)  # a link made just before a crash
    assert promoted_bytes(layout) == second[0].pruned_model.read_bytes()
    assert old.exists()  # the previous version is only removed by a later clean-up

    remove_unlinked(layout)
    assert not old.exists() and not list(layout.root.glob(f"{LINK_PREFIX}*"))
    assert promoted_bytes(layout) == second[0].pruned_model.read_bytes()


def test_a_reader_that_resolved_the_link_keeps_a_whole_version_until_the_next_promotion(setting):
    layout, config, (first, second) = setting
    promote(first, config, "run-1", layout, champion=current(layout))
    reading = layout.promoted.resolve()  # a reader resolves the link once, then reads from there
    promote(second, config, "run-2", layout, champion=current(layout))
    assert (reading / "model.h5").read_bytes() == first[0].pruned_model.read_bytes()
    assert json.loads((reading / "metrics.json").read_text())["target"] == 0.7  # model and figures of one version
    promote(first, config, "run-3", layout, champion=current(layout))
    assert not reading.exists()  # two promotions later, it is gone
    assert len(list(layout.promoted_versions.iterdir())) == 2


def test_a_promotion_waits_for_the_one_holding_the_lock_and_says_so(setting, caplog):
    caplog.set_level(logging.INFO, logger="pruneflow")
    layout, config, (first, second) = setting
    promote(first, config, "run-1", layout, champion=current(layout))
    lock = FileLock(layout.promotion_lock)
    lock.acquire()
    started, times = threading.Event(), {}
    champion = current(layout)

    def promote_second():
        started.set()  # the thread runs: from here, only the lock can hold the promotion back
        promote(second, config, "run-2", layout, champion=champion)
        times["promoted"] = time.monotonic()

    waiting = threading.Thread(target=promote_second)
    try:
        waiting.start()
        assert started.wait(timeout=30)
        waiting.join(timeout=1.0)  # a promotion of small files takes far less, unless it waits
        assert waiting.is_alive() and "promoted" not in times  # blocked on the lock
        assert promoted_bytes(layout) == first[0].pruned_model.read_bytes()
        assert len(list(layout.promoted_versions.iterdir())) == 1  # it has not even written its version
    finally:
        times["released"] = time.monotonic()
        lock.release()
    waiting.join(timeout=30)
    assert not waiting.is_alive() and promoted_bytes(layout) == second[0].pruned_model.read_bytes()
    assert times["promoted"] > times["released"]  # the order both sides recorded
    assert f"Another promotion is under way in {layout.root}: waiting for it to finish" in caplog.messages


def test_of_promotions_measured_against_one_champion_at_once_one_wins_and_the_others_are_superseded(setting):
    layout, config, (first, second) = setting
    promote(first, config, "run-0", layout, champion=None)
    measured = current(layout)  # every run below measured its challenger against this champion
    start = threading.Barrier(8)
    errors, superseded = [], []

    def promote_after_barrier(result, run_id):
        start.wait()
        try:
            superseded.append(promote(result, config, run_id, layout, champion=measured))
        except Exception as error:  # reported below, with the thread's arguments
            errors.append((run_id, error))

    threads = [threading.Thread(target=promote_after_barrier, args=((first, second)[i % 2], f"run-{i + 1}"))
               for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    winner = current(layout)
    assert superseded.count(None) == 1 and superseded.count(winner) == 7  # one promoted; the others stood down
    versions = set(layout.promoted_versions.iterdir())
    assert len(versions) == 2 and layout.promoted.resolve() in versions  # the current one and the one it replaced
    metrics = json.loads((layout.promoted / "metrics.json").read_text())
    model = {0.7: first, 0.9: second}[metrics["target"]]
    assert promoted_bytes(layout) == model[0].pruned_model.read_bytes()  # model and figures from the same promotion
    assert not list(layout.root.glob(f"{LINK_PREFIX}*"))


def test_a_promoted_tflite_file_lands_beside_its_keras_model_with_its_figures(config, tmp_path):
    layout = OutputLayout(root=tmp_path / "outputs")
    model = tmp_path / "strip" / "pruned.h5"
    model.parent.mkdir()
    model.write_bytes(b"keras model")
    result = target_result(0.8, accuracy=0.95, zip_bytes=500, model=model, files={"int8": (0.948, 120, 0.05)})
    file = result.deployable("int8")
    file.path.write_bytes(b"tflite flatbuffer")
    promote((result, file), config, "run-1", layout, champion=current(layout))
    assert (layout.promoted / "model.tflite").read_bytes() == b"tflite flatbuffer"
    assert promoted_bytes(layout) == b"keras model"
    metrics = json.loads((layout.promoted / "metrics.json").read_text())
    assert metrics["file"] == "model.tflite" and metrics["format"] == "int8"  # the promoted file's own figures
    assert metrics["accuracy"] == 0.948 and metrics["zip_bytes"] == 120 and metrics["latency_median_ms"] == 0.05
    assert metrics["accuracy_change"] == pytest.approx(-0.2)  # against the baseline's 0.95
    assert metrics["keras"] == {"file": "model.h5", "source": str(model), "accuracy": 0.95, "zip_bytes": 500,
                                "zip_ratio": 40_000 / 500}


def test_a_promoted_keras_model_comes_without_a_tflite_or_keras3_file(setting):
    layout, config, (first, _) = setting
    promote(first, config, "run-1", layout, champion=current(layout))
    assert sorted(entry.name for entry in layout.promoted.iterdir()) == ["config.json", "metrics.json", "model.h5"]
    metrics = json.loads((layout.promoted / "metrics.json").read_text())
    assert metrics["file"] == "model.h5" and "keras3" not in metrics


def test_a_version_folder_is_named_for_when_and_by_which_flow_run_it_was_promoted(setting):
    layout, config, (first, _) = setting
    promote(first, config, "run-1", layout, champion=None)
    assert re.fullmatch(r"\d{8}T\d{6}-run-1-[0-9a-f]{6}", current(layout))  # UTC time, flow run, a random tail


def keras3_candidate(tmp_path: Path, chosen: str):
    """A Keras 3 baseline's pruned result: its Keras model, an int8 file and the Keras 3 model, each
    with its own bytes and figures; `chosen` is the format the gate chose."""
    model = tmp_path / "strip" / "pruned.h5"
    model.parent.mkdir()
    model.write_bytes(b"keras model")
    result = target_result(0.8, accuracy=0.95, zip_bytes=500, model=model,
                           files={"int8": (0.948, 120, 0.05), KERAS3: (0.949, 800, 2.0)})
    result.deployable("int8").path.write_bytes(b"tflite flatbuffer")
    result.deployable(KERAS3).path.write_bytes(b"keras 3 model")
    return result, result.deployable(chosen)


def test_the_keras3_model_of_a_keras3_baseline_is_promoted_beside_the_chosen_file_with_its_figures(config, tmp_path):
    layout = OutputLayout(root=tmp_path / "outputs")
    chosen = keras3_candidate(tmp_path, "int8")
    promote(chosen, config, "run-1", layout, champion=None)
    assert (layout.promoted / "model.tflite").read_bytes() == b"tflite flatbuffer"
    assert (layout.promoted / "model.keras").read_bytes() == b"keras 3 model"
    assert promoted_bytes(layout) == b"keras model"
    metrics = json.loads((layout.promoted / "metrics.json").read_text())
    assert metrics["file"] == "model.tflite"
    # The pruned model's Keras 3 file, not the baseline's (40,000 B, the baseline's accuracy).
    assert metrics["keras3"] == {"file": "model.keras", "source": str(chosen[0].deployable(KERAS3).path),
                                 "accuracy": 0.949, "zip_bytes": 800, "zip_ratio": 40_000 / 800}


def test_a_chosen_keras3_model_is_promoted_once_as_model_keras(config, tmp_path):
    layout = OutputLayout(root=tmp_path / "outputs")
    promote(keras3_candidate(tmp_path, KERAS3), config, "run-1", layout, champion=None)
    assert sorted(entry.name for entry in layout.promoted.iterdir()) == [
        "config.json", "metrics.json", "model.h5", "model.keras"
    ]
    assert (layout.promoted / "model.keras").read_bytes() == b"keras 3 model"
    metrics = json.loads((layout.promoted / "metrics.json").read_text())
    assert metrics["file"] == "model.keras" and metrics["format"] == KERAS3 and metrics["accuracy"] == 0.949


@pytest.mark.parametrize("point", PROMOTION_POINTS)
def test_a_step_that_fails_puts_the_previous_model_back_and_the_next_promotion_removes_its_version(
    setting, point, monkeypatch, caplog,
):
    layout, config, (first, second) = setting
    promote(first, config, "run-1", layout, champion=None)
    previous = layout.promoted.resolve()
    monkeypatch.setenv(FAULT_ENV, f"io_error@{point}")
    with pytest.raises(OSError, match=f"injected by {FAULT_ENV} at {point}"):
        promote(second, config, "run-2", layout, champion=previous.name)
    assert layout.promoted.resolve() == previous and promoted_bytes(layout) == first[0].pruned_model.read_bytes()
    assert not layout.promotion_journal.exists()
    assert (f"Rolled back the promotion of flow run run-2, which did not finish: promoted is {previous.name} again"
            in caplog.messages)
    with FileLock(layout.promotion_lock).acquire(timeout=0):  # free again, for a retry
        pass
    [written] = set(layout.promoted_versions.iterdir()) - {previous}  # written whole, never promoted
    assert (written / "model.h5").read_bytes() == second[0].pruned_model.read_bytes()

    monkeypatch.delenv(FAULT_ENV)
    assert promote(second, config, "run-3", layout, champion=previous.name) is None
    assert not written.exists() and json.loads((layout.promoted / "metrics.json").read_text())["flow_run_id"] == "run-3"


def test_a_first_promotion_that_fails_leaves_nothing_promoted(setting, monkeypatch, caplog):
    layout, config, (first, _) = setting
    monkeypatch.setenv(FAULT_ENV, "io_error@promote:linked")
    with pytest.raises(OSError, match="promote:linked"):
        promote(first, config, "run-1", layout, champion=None)
    assert not layout.promoted.is_symlink() and not layout.promoted.exists()
    assert not layout.promotion_journal.exists()
    assert "Rolled back the promotion of flow run run-1, which did not finish: promoted is unset again" in caplog.messages


def test_recover_rolls_back_a_promotion_killed_after_its_switch_and_nothing_else(setting):
    layout, config, (first, second) = setting
    promote(first, config, "run-1", layout, champion=None)
    previous = layout.promoted.resolve()
    killed = killed_after_the_switch(second, config, "run-2", layout)
    assert promoted_bytes(layout) == second[0].pruned_model.read_bytes()  # until it is rolled back

    journal = recover(layout)
    assert (journal.flow_run_id, journal.previous, journal.version) == ("run-2", previous.name, killed.name)
    assert layout.promoted.resolve() == previous and not layout.promotion_journal.exists()
    assert recover(layout) is None  # nothing left to roll back, and nothing changed
    assert layout.promoted.resolve() == previous


def test_recover_unsets_promoted_when_the_killed_promotion_was_the_first(setting):
    layout, config, (first, _) = setting
    killed_after_the_switch(first, config, "run-1", layout)
    assert recover(layout).previous is None
    assert not layout.promoted.is_symlink() and not layout.promotion_journal.exists()


def test_a_promotion_rolls_back_a_killed_one_before_it_compares_the_champion(setting):
    layout, config, (first, second) = setting
    promote(first, config, "run-1", layout, champion=None)
    measured = current(layout)
    killed = killed_after_the_switch(second, config, "run-2", layout)
    # Measured against the champion the roll-back puts back, so not superseded by the killed version.
    assert promote(second, config, "run-3", layout, champion=measured) is None
    assert json.loads((layout.promoted / "metrics.json").read_text())["flow_run_id"] == "run-3"
    assert not killed.exists() and (layout.promoted_versions / measured).exists()


def test_clean_up_keeps_the_version_that_keep_resolves_to(setting, tmp_path):
    layout, config, (first, second) = setting
    promote(first, config, "run-1", layout, champion=None)
    old = layout.promoted.resolve()
    promote(second, config, "run-2", layout, champion=old.name)
    reading = tmp_path / "reading"
    reading.symlink_to(old)  # a reader's own link to the version it reads
    remove_unlinked(layout, keep=reading)
    assert (old / "model.h5").read_bytes() == first[0].pruned_model.read_bytes()
    remove_unlinked(layout)
    assert not old.exists()


def test_a_clean_up_that_cannot_remove_something_does_not_fail_the_promotion_before_it(setting):
    layout, config, (first, _) = setting
    layout.promoted_versions.mkdir(parents=True)
    (layout.promoted_versions / "notes.txt").write_text("not a version folder")  # rmtree cannot remove a file
    assert promote(first, config, "run-1", layout, champion=None) is None
    assert promoted_bytes(layout) == first[0].pruned_model.read_bytes()


@pytest.mark.parametrize("point", PROMOTION_POINTS)
def test_a_failed_first_promotion_with_a_registry_leaves_no_champion_and_tags_what_it_registered(
    setting, registry, point, monkeypatch, caplog,
):
    # (Putting back a champion alias that was there before: tests/flows/test_registry.py, on a server.)
    from pruneflow.tasks.decide.registry import SweepRun, champion_version

    layout, config, (first, _) = setting
    monkeypatch.setenv(FAULT_ENV, f"io_error@{point}")
    with pytest.raises(OSError, match=point):
        promote(first, config, "run-1", layout, SweepRun(registry, "run-1", "run-1"), champion=None)
    assert not layout.promoted.is_symlink() and not layout.promotion_journal.exists()
    assert champion_version(registry) is None
    # Registered on the way (from promote:registered on), never champion: tagged so.
    assert registered(registry) == ({} if point == "promote:written" else {"1": "true"})
    assert ("Rolled back the promotion of flow run run-1, which did not finish: promoted is unset again, "
            "and the champion alias version unset") in caplog.messages



@pytest.mark.parametrize("point", PROMOTION_POINTS)
def test_a_challenger_whose_promotion_fails_leaves_the_champion_everywhere_and_its_version_tagged(
    setting, registry, point, monkeypatch, caplog,
):
    """A second promotion that raises at each step, with a registry: the link and the champion
    alias go back to the first, the version registered on the way is tagged rolled back."""
    from pruneflow.tasks.decide.registry import SweepRun, champion_version

    layout, config, (first, second) = setting
    promote(first, config, "run-1", layout, SweepRun(registry, "run-1", "run-1"), champion=None)
    before = current(layout)
    monkeypatch.setenv(FAULT_ENV, f"io_error@{point}")
    with pytest.raises(OSError, match=point):
        promote(second, config, "run-2", layout, SweepRun(registry, "run-2", "run-2"), champion=before)
    assert current(layout) == before and not layout.promotion_journal.exists()
    assert champion_version(registry) == "1"
    assert registered(registry) == ({"1": None} if point == "promote:written" else {"1": None, "2": "true"})
    assert ("Rolled back the promotion of flow run run-2, which did not finish: promoted is "
            f"{before} again, and the champion alias version 1") in caplog.messages

def champion_measured(version: str) -> ChampionEvaluation:
    """The champion's file as a sweep measured it, from promoted version folder `version`."""
    return ChampionEvaluation(folder=Path("/nowhere"), version=version, format=KERAS, accuracy=0.95, zip_bytes=300,
                              latency_ms=1.0, machine="test machine", examples=100)


def test_the_promote_task_promotes_and_says_where(setting, caplog):
    caplog.set_level(logging.INFO, logger="pruneflow")
    layout, config, (first, _) = setting
    decision = Decision(promote=True, reasons=["no champion yet: the gate's choice is promoted"])
    assert promote_model.fn(first, decision, config, "run-1", layout) == decision
    assert promoted_bytes(layout) == first[0].pruned_model.read_bytes()
    assert f"Promoted the 0.7-sparsity model, as Keras .h5, to {layout.promoted}" in caplog.messages


def test_the_promote_task_stands_down_when_another_run_promoted_since_it_measured_the_champion(setting, caplog):
    layout, config, (first, second) = setting
    promote(first, config, "run-1", layout, champion=None)
    decision = Decision(promote=True, reasons=["held its accuracy, smaller"], champion=champion_measured(current(layout)))
    promote(second, config, "run-2", layout, champion=current(layout))  # another run, meanwhile
    winner = current(layout)

    stood_down = promote_model.fn(first, decision, config, "run-3", layout)
    assert not stood_down.promote and stood_down.superseded_by == winner and stood_down.reasons[0] == decision.reasons[0]
    assert current(layout) == winner
    assert f"Not promoted: another run promoted {winner} meanwhile" in caplog.text



def test_the_promote_task_stands_down_when_the_champion_it_measured_was_unlinked_since(setting, caplog):
    """The champion's link removed while the sweep decided (a person, a first promotion rolled
    back): nothing is promoted against a state the challenger was not measured in."""
    layout, config, (first, second) = setting
    promote(first, config, "run-1", layout, champion=None)
    decision = Decision(promote=True, reasons=["held its accuracy, smaller"], champion=champion_measured(current(layout)))
    layout.promoted.unlink()

    stood_down = promote_model.fn(second, decision, config, "run-2", layout)
    assert not stood_down.promote and stood_down.superseded_by == "" and not layout.promoted.is_symlink()
    assert "Not promoted: the champion this challenger was measured against is no longer promoted" in caplog.text


def test_a_second_promotion_with_a_database_registry_reads_the_champion_as_a_version_string(setting, registry):
    """A tracking URI that is a database (sqlite:///...) answers the alias's version as a number,
    a server as a string: both are read as the string the journal keeps."""
    from pruneflow.tasks.decide.registry import SweepRun, champion_version

    layout, config, (first, second) = setting
    promote(first, config, "run-1", layout, SweepRun(registry, "run-1", "run-1"), champion=None)
    assert champion_version(registry) == "1"
    promote(second, config, "run-2", layout, SweepRun(registry, "run-2", "run-2"), champion=current(layout))
    assert champion_version(registry) == "2" and registered(registry) == {"1": None, "2": None}

def test_the_promote_task_promotes_a_challenger_measured_against_the_current_champion(setting):
    layout, config, (first, second) = setting
    promote(first, config, "run-1", layout, champion=None)
    decision = Decision(promote=True, reasons=["held its accuracy, smaller"], champion=champion_measured(current(layout)))
    assert promote_model.fn(second, decision, config, "run-2", layout) == decision
    assert promoted_bytes(layout) == second[0].pruned_model.read_bytes()


def test_promotions_at_once_with_a_registry_register_and_alias_the_winner_only(setting, mlflow_server):
    from mlflow import MlflowClient
    from pruneflow.tasks.decide.registry import CHAMPION, SweepRun
    from pruneflow.tasks.specs.config import RegistryConfig

    layout, config, (first, second) = setting
    spec = RegistryConfig(tracking_uri=mlflow_server, experiment="at-once", model_name="at-once")
    promote(first, config, "run-0", layout, SweepRun(spec, "run-0", "run-0"), champion=None)
    measured, runs = current(layout), [SweepRun(spec, f"run-{i}", f"run-{i}") for i in range(1, 5)]
    start, superseded = threading.Barrier(len(runs)), []

    def promote_after_barrier(run):
        start.wait()
        superseded.append(promote(second, config, run.spec.experiment, layout, run, champion=measured))

    threads = [threading.Thread(target=promote_after_barrier, args=(run,)) for run in runs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    winner = current(layout)
    assert superseded.count(None) == 1 and superseded.count(winner) == len(runs) - 1
    mlflow = MlflowClient(tracking_uri=mlflow_server, registry_uri=mlflow_server)
    versions = sorted(mlflow.search_model_versions("name = 'at-once'"), key=lambda v: int(v.version))
    assert [v.version for v in versions] == ["1", "2"]  # the runs that stood down registered nothing
    assert mlflow.get_registered_model("at-once").aliases == {CHAMPION: "2"}
    assert versions[1].tags["pruneflow.version_folder"] == winner and versions[1].tags["target"] == "0.9"
    assert not layout.promotion_journal.exists()
