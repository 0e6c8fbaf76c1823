"""The model registry: sweeps logged in a real MLflow server, promotions registered as versions,
the `champion` alias moved only when the challenger wins, and a promotion killed between its
steps rolled back in the folder and the registry alike."""

import os
import signal
import uuid
from pathlib import Path

import pytest
import yaml

from pruneflow.flows.sweep import sweep_flow
from pruneflow.tasks.core.layout import OutputLayout
from pruneflow.tasks.decide.promote import Journal
from pruneflow.tasks.decide.registry import CHAMPION
from pruneflow.tasks.specs.config import parse_config
from tests.helpers.cli import Cli


def registry_config(config_dict, uri: str, targets, **gate) -> dict:
    """The tiny config, sweeping `targets`, logged in its own experiment and model on `uri`. Size
    decides against the champion: the tiny model's 0.004 ms timings vary by more than 25 % from
    one run to the next on a busy machine, so speed alone may not (champion_min_speedup 0.99)."""
    name = config_dict.setdefault("registry", {"tracking_uri": uri, "experiment": f"e-{uuid.uuid4().hex[:8]}",
                                               "model_name": f"m-{uuid.uuid4().hex[:8]}"})
    sweep = {"targets": targets, "max_accuracy_drop": 100.0, "min_sparsity": 0.0, "champion_min_speedup": 0.99, **gate}
    return {**config_dict, "registry": name, "sweep": sweep}


def client(uri: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def champion(config) -> tuple[str | None, str | None]:
    """(the version folder `promoted` points to, the version the `champion` alias points to)."""
    layout = OutputLayout(root=config.output_root)
    folder = layout.promoted.resolve().name if layout.promoted.is_symlink() else None
    model = client(config.registry.tracking_uri).get_registered_model(config.registry.model_name)
    return folder, model.aliases.get(CHAMPION)


def test_sweeps_register_a_version_and_move_the_alias_only_when_the_challenger_wins(
    prefect_server, mlflow_server, seed_sweep, config_dict
):
    seed_sweep(config_dict)  # the targets' stages stored: the registry is what this test is about
    mlflow = client(mlflow_server)
    first = parse_config(registry_config(config_dict, mlflow_server, [0.3]))
    outcomes = [sweep_flow(first)]
    # 0.6 zips smaller than the 0.3 champion: it wins. Then 0.3 alone, bigger: it loses.
    for targets in ([0.3, 0.6], [0.3]):
        outcomes.append(sweep_flow(parse_config(registry_config(config_dict, mlflow_server, targets))))
    assert [o.decision.verdict for o in outcomes] == ["promoted (no champion yet)", "promoted", "kept the champion"]

    name, experiment = first.registry.model_name, mlflow.get_experiment_by_name(first.registry.experiment)
    versions = sorted(mlflow.search_model_versions(f"name = '{name}'"), key=lambda v: int(v.version))
    assert [v.version for v in versions] == ["1", "2"]  # the losing challenger registered nothing
    assert [v.tags["target"] for v in versions] == ["0.3", "0.6"]
    assert mlflow.get_registered_model(name).aliases == {CHAMPION: "2"}
    folder, alias = champion(first)
    assert folder == versions[1].tags["pruneflow.version_folder"] and alias == "2"
    assert {f.path for f in mlflow.list_artifacts(versions[1].run_id, "promoted")} == {
        "promoted/model.h5", "promoted/model.tflite", "promoted/config.json", "promoted/metrics.json"
    }

    runs = mlflow.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])
    assert [r.data.tags["pruneflow.decision"] for r in runs] == [o.decision.verdict for o in outcomes]
    assert [r.data.tags["pruneflow.challenger"] for r in runs] == ["promoted", "promoted", "rejected"]
    assert [r.info.status for r in runs] == ["FINISHED"] * 3
    assert versions[1].run_id == runs[1].info.run_id
    rejected = runs[2]
    assert "not smaller" in rejected.data.tags["pruneflow.reasons"]
    assert rejected.data.params["pruning.kind"] == "constant" and rejected.data.params["sweep.targets"] == "[0.3]"
    result, file = outcomes[2].chosen
    assert rejected.data.metrics["target_0.30/int8/accuracy"] == pytest.approx(file.accuracy)
    assert rejected.data.metrics["target_0.30/int8/zip_bytes"] == file.zip_bytes
    assert rejected.data.metrics["champion/zip_bytes"] == outcomes[2].decision.champion.zip_bytes
    assert {f.path for f in mlflow.list_artifacts(rejected.info.run_id)} == {"sweep.md", "sweep.json", "sweep.png"}


def test_without_a_tracking_uri_nothing_is_logged(prefect_server, mlflow_server, seed_sweep, config_dict):
    seed_sweep(config_dict)
    before = len(client(mlflow_server).search_experiments())
    outcome = sweep_flow(parse_config({**config_dict, "sweep": {"targets": [0.3], "max_accuracy_drop": 100.0, "min_sparsity": 0.0}}))
    assert outcome.decision.promote
    assert len(client(mlflow_server).search_experiments()) == before


def test_an_unreachable_registry_fails_the_sweep_before_any_training(prefect_server, config_dict, monkeypatch):
    from pruneflow.flows.server import free_port
    from pruneflow.tasks.core.errors import PruneflowError

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    uri = f"http://127.0.0.1:{free_port()}"
    state = sweep_flow(parse_config(registry_config(config_dict, uri, [0.3])), return_state=True)
    with pytest.raises(PruneflowError, match=rf"MLflow at registry.tracking_uri {uri} failed while opening a run"):
        state.result()
    assert not (Path(config_dict["output_root"]) / "artifacts" / "prune_train").exists()


def test_a_promotion_killed_between_its_steps_leaves_the_previous_champion_everywhere(
    prefect_server, mlflow_server, seed_sweep, config_dict, tmp_path
):
    seed_sweep(config_dict)
    first = parse_config(registry_config(config_dict, mlflow_server, [0.3]))
    sweep_flow(first)
    before = champion(first)
    assert before[1] == "1"
    layout, path = OutputLayout(root=first.output_root), tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(registry_config(config_dict, mlflow_server, [0.3, 0.6])))  # 0.6 wins

    # Killed with the link and the alias both switched, the journal not yet removed. (A kill or a
    # failure at each step, in the process: tests/tasks/decide/test_promote.py, with MLflow too.)
    killed = Cli(path, "sweep", PRUNEFLOW_INJECT_FAULT="hang@promote:aliased")
    try:
        killed.wait_for("pruneflow: hanging")
        os.kill(killed.process.pid, signal.SIGKILL)
        assert killed.finish() == -signal.SIGKILL
    finally:
        killed.stop()
    assert layout.promotion_journal.is_file()  # killed before its commit
    assert champion(first)[0] != before[0] and champion(first)[1] != before[1]  # both switched until the roll-back

    # What the next sweep does first, here one that keeps the champion (it does not promote, so
    # only its own roll-back can put things back): the link and the alias go back.
    journal = Journal.model_validate_json(layout.promotion_journal.read_text())
    assert journal.previous == before[0] and journal.previous_registered == "1"
    assert sweep_flow(first).decision.verdict.startswith("kept")
    assert champion(first) == before and not layout.promotion_journal.exists()
    versions = client(mlflow_server).search_model_versions(f"name='{first.registry.model_name}'")
    tags = {v.version: v.tags.get("pruneflow.rolled_back") for v in versions}
    assert tags == {"1": None, journal.registered: "true"}  # registered on the way, never champion since

    # And the next sweep promotes the winner whole.
    outcome = sweep_flow(parse_config(yaml.safe_load(path.read_text())))
    assert outcome.decision.verdict == "promoted"
    folder, alias = champion(first)
    assert folder != before[0] and alias not in ("1", journal.registered)
    assert (layout.promoted / "metrics.json").is_file()
