"""The sweep flow: mapped stages per target, the gate both ways, promotion, and the history."""

import base64
import json
from pathlib import Path

import pytest

from pruneflow.flows.cli import decided
from pruneflow.flows.sweep import sweep_flow
from pruneflow.tasks.core.errors import PruneflowError
from pruneflow.tasks.core.layout import OutputLayout
from pruneflow.tasks.decide.history import read_history, regressions, runs_summary
from pruneflow.tasks.specs.config import parse_config
from tests.helpers.graph import PER_TARGET, PREPARED
from tests.helpers.prefect import artifacts_of, task_runs


def sweep_config(config_dict, **gate):
    return parse_config({**config_dict, "sweep": {"targets": [0.3, 0.6], **gate}})


def test_sweep_prunes_each_target_and_promotes_the_smallest_within_the_gate(prefect_server, seed_sweep, config_dict):
    seed_sweep(config_dict)  # the targets trained by the session's sweep: the files and the gate are what this is about
    del config_dict["export"]  # the default: every format
    config = sweep_config(config_dict, max_accuracy_drop=100.0, min_sparsity=0.0)
    state = sweep_flow(config, return_state=True)
    assert state.is_completed(), state.message
    results = state.result().results
    runs = task_runs(state.state_details.flow_run_id)
    counts = {name: sum(1 for run in runs if run[0] == name) for name, _, _ in runs}
    assert {stage: counts[stage] for stage in PREPARED} == {stage: 1 for stage in PREPARED}
    assert {stage: counts[stage] for stage in PER_TARGET} == {stage: 2 for stage in PER_TARGET}
    assert [r.target for r in results] == [0.3, 0.6]
    assert [r.measured_sparsity for r in results] == pytest.approx([0.3, 0.6], abs=0.01)
    assert results[1].sizes.pruned.zip_bytes < results[0].sizes.pruned.zip_bytes

    # Every file passes this gate: the smallest one, zip-deflated, is promoted with its Keras model.
    files = [(r, f) for r in results for f in r.deployables if f.model == "pruned"]
    assert len(files) == 2 * (1 + len(config.export.formats))  # the Keras .h5 and each format's file, per target
    smallest_result, smallest = min(files, key=lambda item: item[1].zip_bytes)
    assert smallest_result.target == 0.6 and smallest.format.startswith("int8")
    promoted = config.output_root / "promoted"
    metrics = json.loads((promoted / "metrics.json").read_text())
    assert metrics["target"] == 0.6 and metrics["flow_run_id"] == str(state.state_details.flow_run_id)
    assert (promoted / "model.h5").read_bytes() == results[1].pruned_model.read_bytes()
    assert (promoted / "model.tflite").read_bytes() == smallest.path.read_bytes()
    assert metrics["format"] == smallest.format and metrics["zip_bytes"] == smallest.zip_bytes
    assert json.loads((promoted / "config.json").read_text())["pruning"]["target_sparsity"] == 0.6
    history = read_history(config.output_root / "history")
    assert list(history["target"]) == [0.3] * 5 + [0.6] * 5
    assert list(history["promoted"]) == [f is smallest for _, f in files]
    assert list(history["format"]) == [f.format for _, f in files] and history["latency_ms"].gt(0).all()
    [run_dir] = (config.output_root / "runs").iterdir()
    assert (run_dir / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    recorded = json.loads((run_dir / "sweep.json").read_text())
    assert recorded["promoted"] == {"target": 0.6, "format": smallest.format}
    assert [r["target"] for r in recorded["results"]] == [0.3, 0.6]
    artifacts = artifacts_of(state.state_details.flow_run_id)
    markdown = artifacts["pruneflow-sweep"].data
    assert "Promoted: sparsity 0.6" in markdown and str(run_dir / "sweep.png") in markdown
    assert str(results[0].pruned_model) in markdown
    plot = artifacts["pruneflow-sweep-plot"]  # the plot itself, for the UI to show (the browser test looks)
    assert plot.type == "image" and plot.data == "data:image/png;base64," + base64.b64encode((run_dir / "sweep.png").read_bytes()).decode()
    table = json.loads(artifacts["pruneflow-sweep-table"].data)
    assert [row["target"] for row in table] == ["0.30"] * 5 + ["0.60"] * 5 and {row["gate"] for row in table} == {"pass"}


def test_a_target_that_fails_is_reported_fails_the_sweep_and_the_others_keep_their_figures(
    prefect_server, config_dict, monkeypatch
):
    monkeypatch.setenv("PRUNEFLOW_INJECT_FAULT", "invalid_data@1")
    monkeypatch.setenv("PRUNEFLOW_FAULT_TARGETS", "0.6")  # 0.3 trains; 0.6 fails
    config = sweep_config(config_dict, max_accuracy_drop=100.0, min_sparsity=0.0)
    state = sweep_flow(config, return_state=True)
    assert state.is_failed()
    with pytest.raises(PruneflowError, match=r"sweep: 1 of 2 target\(s\) failed: 0.6: PruneflowError: invalid training data"):
        state.result()
    # 0.3 passed the gate, but with a target missing the smallest may be the one that failed.
    assert not (config.output_root / "promoted").exists()
    [run_dir] = (config.output_root / "runs").iterdir()
    report = json.loads((run_dir / "sweep.json").read_text())
    assert set(report["failed"]) == {"0.6"} and [r["target"] for r in report["results"]] == [0.3]
    # The night is on record, the failed target without figures, and counts as a regression.
    history = read_history(OutputLayout(root=config.output_root).history)
    assert history[["target", "format", "failed"]].values.tolist() == [
        [0.3, "keras_h5", False], [0.3, "int8", False], [0.6, "", True]
    ]
    assert history.loc[history["failed"], "error"].str.contains("invalid training data").all()
    assert history.loc[~history["failed"], "accuracy"].notna().all() and history.loc[~history["failed"], "passed_gate"].all()
    [flagged] = regressions(runs_summary(history), tolerance=0.5).values()
    assert flagged.startswith("1 of 2 targets failed (first: PruneflowError: invalid training data")
    [run] = runs_summary(history).itertuples()
    assert decided(run) == "nothing to promote: 1 of 2 targets failed"  # what `pruneflow history` shows


def test_no_target_within_the_gate_fails_the_run_and_keeps_the_promoted_model(prefect_server, seed_sweep, config_dict):
    seed_sweep(config_dict)  # the targets' stages stored: the gate is what this test is about
    first = sweep_flow(sweep_config(config_dict, max_accuracy_drop=100.0, min_sparsity=0.0), return_state=True)
    assert first.is_completed(), first.message
    config = sweep_config(config_dict, min_sparsity=0.9)
    promoted = config.output_root / "promoted"
    before = {path.name: path.read_bytes() for path in promoted.iterdir()}

    second = sweep_flow(config, return_state=True)
    assert second.is_failed()
    with pytest.raises(PruneflowError, match=r"no file passed the gate .*min_sparsity 0.9.*the best candidate, sparsity 0\.[36] as "):
        second.result()
    assert {path.name: path.read_bytes() for path in promoted.iterdir()} == before
    history = read_history(config.output_root / "history")
    assert len(history) == 8 and history["flow_run_id"].nunique() == 2  # 2 targets x 2 files (.h5, int8), twice
    assert history["promoted"].sum() == 1 and history["promoted"].iloc[:4].any()
    assert not history["passed_gate"].iloc[4:].any()


def test_history_lists_runs_and_exits_1_when_the_latest_regressed(
    prefect_server, seed_sweep, config_dict, tmp_path, capsys
):
    import yaml

    from pruneflow.flows.cli import main

    seed_sweep(config_dict)

    loose = tmp_path / "loose.yaml"
    loose.write_text(yaml.safe_dump({**config_dict, "sweep": {"targets": [0.3, 0.6], "max_accuracy_drop": 100.0}}))
    strict = tmp_path / "strict.yaml"
    strict.write_text(yaml.safe_dump({**config_dict, "sweep": {"targets": [0.3, 0.6], "min_sparsity": 0.9}}))
    assert main(["history", str(loose)]) == 2  # no history yet
    assert "no sweep history yet" in capsys.readouterr().err
    assert main(["sweep", str(loose)]) == 0
    out = capsys.readouterr().out
    assert "| 0.60   | TFLite int8 " in out and "Promoted: sparsity 0.6, TFLite int8" in out
    last = out.rstrip().splitlines()[-1]  # the command ends with where its outputs are
    assert last.startswith("Run folder: ") and last.endswith(" (sweep.json, sweep.md, sweep.png, debug.log)")
    run_dir = Path(last.removeprefix("Run folder: ").removesuffix(" (sweep.json, sweep.md, sweep.png, debug.log)"))
    assert run_dir.parent == tmp_path / "outputs" / "runs" and (run_dir / "sweep.png").stat().st_size > 0
    assert main(["history", str(loose)]) == 0
    assert main(["sweep", str(strict)]) == 2
    assert "no file passed the gate" in capsys.readouterr().err
    assert main(["history", str(loose)]) == 1
    header, first, second = capsys.readouterr().out.splitlines()  # the two sweeps, oldest first
    assert header.startswith("started (UTC)") and "  decision " in header
    assert " 0.60 " in first and first.endswith("  promoted (no champion yet): the gate's choice")  # no regression
    assert " none " in second and second.endswith("no model passed the gate (the run before promoted one)")
    assert "  nothing to promote: no file passed the gate  " in second


def test_a_sweep_on_a_local_dask_cluster_trains_targets_in_parallel_processes(
    prefect_server, config_dict, tmp_path, monkeypatch
):
    from prefect.settings import PREFECT_API_URL

    from pruneflow.flows.sweep import dask_runner

    # The cluster's worker processes read the server's address from their environment.
    monkeypatch.setenv("PREFECT_API_URL", PREFECT_API_URL.value())
    config = parse_config({**config_dict, "sweep": {"targets": [0.3, 0.6], "max_accuracy_drop": 100.0, "max_parallel": 2}})
    state = sweep_flow.with_options(task_runner=dask_runner("local", workers=2))(config, return_state=True)
    assert state.is_completed(), state.message
    assert [r.measured_sparsity for r in state.result().results] == pytest.approx([0.3, 0.6], abs=0.01)
    assert json.loads((config.output_root / "promoted" / "metrics.json").read_text())["target"] == 0.6

    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, TaskRunFilter, TaskRunFilterName

    with get_client(sync_client=True) as client:
        training = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id])),
            task_run_filter=TaskRunFilter(name=TaskRunFilterName(like_="prune_train")),
        )
    assert len(training) == 2 and all(run.state.is_completed() for run in training)
    first, second = sorted(training, key=lambda run: run.start_time)
    assert second.start_time < first.end_time  # the two trainings overlapped: two processes at once


def test_a_dask_sweep_without_a_prefect_server_is_refused():
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from pruneflow.flows.sweep import dask_runner

    with temporary_settings(updates={PREFECT_API_URL: None}):
        with pytest.raises(PruneflowError, match="a sweep on Dask needs a Prefect server .* set PREFECT_API_URL"):
            dask_runner("local")


def test_a_challenger_replaces_the_champion_only_when_it_wins(prefect_server, seed_sweep, config_dict):
    """Three nightly sweeps: the first promotes (no champion yet); the second, the same, makes a
    file no smaller than the champion, measured again in that run, and keeps it; the third, at a
    higher sparsity, makes a smaller one within the accuracy margin and replaces it."""
    thresholds = {"max_accuracy_drop": 100.0, "min_sparsity": 0.0, "champion_min_speedup": 0.9,
                  "champion_max_accuracy_loss": 100.0, "champion_max_relative_accuracy_loss": 1.0}
    config = sweep_config(config_dict, **thresholds)
    promoted = config.output_root / "promoted"
    seed_sweep(config_dict)

    first = sweep_flow(config, return_state=True).result()
    assert first.decision.promote and first.decision.verdict == "promoted (no champion yet)"
    version = promoted.resolve()

    second_state = sweep_flow(config, return_state=True)
    second = second_state.result()
    assert not second.decision.promote and second.decision.verdict == "kept the champion"
    champion = second.decision.champion
    assert champion.format == second.chosen[1].format and champion.zip_bytes == second.chosen[1].zip_bytes
    assert champion.accuracy == pytest.approx(second.chosen[1].accuracy)  # the same file, measured again
    assert any(reason.endswith(": not smaller") for reason in second.decision.reasons)
    assert promoted.resolve() == version

    sparser = parse_config({**config_dict, "sweep": {"targets": [0.9], **thresholds}})
    third = sweep_flow(sparser, return_state=True).result()
    assert third.decision.promote and third.decision.verdict == "promoted", third.decision.reasons
    assert third.chosen[1].zip_bytes < champion.zip_bytes
    assert promoted.resolve() != version
    assert json.loads((promoted / "metrics.json").read_text())["target"] == 0.9

    history = read_history(config.output_root / "history")
    decisions = history.groupby("flow_run_id", sort=False)["decision"].first().tolist()
    assert decisions == ["promoted (no champion yet)", "kept the champion", "promoted"]
    flagged = regressions(runs_summary(history), tolerance=0.5)
    assert str(second_state.state_details.flow_run_id) not in flagged  # keeping the champion is no regression


def test_a_sweep_run_again_as_the_same_flow_run_writes_its_history_and_promotion_once(
    prefect_server, seed_sweep, config_dict
):
    # What a rescheduled run does (pruneflow.deployments.recovery): the same flow run executed a second time.
    from prefect import get_client
    from prefect.flow_engine import run_flow
    from prefect.states import AwaitingRetry

    config = sweep_config(config_dict, max_accuracy_drop=100.0, min_sparsity=0.0)
    seed_sweep(config_dict)
    with get_client(sync_client=True) as client:
        flow_run = client.create_flow_run(sweep_flow, parameters={"config": config})
        first = run_flow(sweep_flow, flow_run=flow_run, parameters={"config": config}, return_type="state")
        assert first.is_completed(), first.message
        client.set_flow_run_state(flow_run.id, AwaitingRetry(), force=True)
        second = run_flow(
            sweep_flow, flow_run=client.read_flow_run(flow_run.id), parameters={"config": config}, return_type="state"
        )
        assert second.is_completed(), second.message
        assert client.read_flow_run(flow_run.id).run_count == 2
    decision = second.result().decision
    assert decision.promote and decision.earlier_attempt and decision.champion is None
    layout = OutputLayout(root=config.output_root)
    [version] = layout.promoted_versions.iterdir()
    assert layout.promoted.resolve() == version
    history = read_history(layout.history)  # each attempt wrote its rows; the later one's count
    assert set(history["flow_run_id"]) == {str(flow_run.id)} and len(history) == 4  # Keras and int8, per target
    assert set(history["decision"]) == {"promoted"} and history["promoted"].sum() == 1
