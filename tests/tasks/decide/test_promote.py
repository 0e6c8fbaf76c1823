"""Promotion: a whole model or the previous one, under a lock, and after a crash at any step."""

import json
import threading
import time

import pytest

from pruneflow.tasks.core.layout import OutputLayout
from pruneflow.tasks.decide.promote import LINK_PREFIX, promote, remove_unlinked, switch_link, write_version
from pruneflow.tasks.specs.config import parse_config
from pruneflow.tasks.specs.formats import KERAS
from tests.helpers.models import target_result


@pytest.fixture
def setting(config_dict, tmp_path):
    """The layout under a fresh output root, and two candidate models with different bytes."""
    layout = OutputLayout(root=tmp_path / "outputs")
    models = []
    for target in (0.7, 0.9):
        model = tmp_path / f"strip-{target}" / "pruned.h5"
        model.parent.mkdir()
        model.write_bytes(f"model pruned to {target}".encode())
        result = target_result(target, accuracy=0.95, zip_bytes=int(1000 * (1 - target)), model=model)
        models.append((result, result.deployable(KERAS)))
    return layout, parse_config(config_dict), models


def current(layout: OutputLayout) -> str | None:
    """The version folder promoted now: the champion a challenger is measured against."""
    return layout.promoted.resolve().name if layout.promoted.is_symlink() else None


def promoted_bytes(layout: OutputLayout) -> bytes:
    return (layout.promoted / "model.h5").read_bytes()


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


def test_a_promotion_waits_for_the_one_holding_the_lock(setting):
    from filelock import FileLock

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


def test_a_promoted_tflite_file_lands_beside_its_keras_model_with_its_figures(config_dict, tmp_path):
    layout = OutputLayout(root=tmp_path / "outputs")
    model = tmp_path / "strip" / "pruned.h5"
    model.parent.mkdir()
    model.write_bytes(b"keras model")
    result = target_result(0.8, accuracy=0.95, zip_bytes=500, model=model, files={"int8": (0.948, 120, 0.05)})
    file = result.deployable("int8")
    file.path.write_bytes(b"tflite flatbuffer")
    promote((result, file), parse_config(config_dict), "run-1", layout, champion=current(layout))
    assert (layout.promoted / "model.tflite").read_bytes() == b"tflite flatbuffer"
    assert promoted_bytes(layout) == b"keras model"
    metrics = json.loads((layout.promoted / "metrics.json").read_text())
    assert metrics["file"] == "model.tflite" and metrics["format"] == "int8"  # the promoted file's own figures
    assert metrics["accuracy"] == 0.948 and metrics["zip_bytes"] == 120 and metrics["latency_median_ms"] == 0.05
    assert metrics["accuracy_change"] == pytest.approx(-0.2)  # against the baseline's 0.95
    assert metrics["keras"] == {"file": "model.h5", "source": str(model), "accuracy": 0.95, "zip_bytes": 500,
                                "zip_ratio": 40_000 / 500}


def test_a_promoted_keras_model_comes_without_a_tflite_file(setting):
    layout, config, (first, _) = setting
    promote(first, config, "run-1", layout, champion=current(layout))
    assert not (layout.promoted / "model.tflite").exists()
    assert json.loads((layout.promoted / "metrics.json").read_text())["file"] == "model.h5"


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
