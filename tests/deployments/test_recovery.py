"""Workers that die and a server that restarts, on the PostgreSQL-backed server: nothing lost."""

import json
import time
from pathlib import Path

from prefect import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.deployments import run_deployment
from prefect.settings import PREFECT_API_URL, temporary_settings

from pruneflow.deployments.gpu import REPO
from pruneflow.deployments.local import start_worker
from pruneflow.deployments.recovery import CRASH_MESSAGE
from pruneflow.tasks.core.layout import OutputLayout
from pruneflow.tasks.decide.history import read_history
from pruneflow.tasks.unkeyed.faults import FAULT_ENV, RELEASE_ENV
from tests.deployments.conftest import POOL
from tests.helpers.graph import STAGES
from tests.helpers.polling import wait_until


def flow_run_process(flow_run_id, timeout: float = 120) -> tuple[int, int]:
    """(PID, parent PID) of the process running the flow run, found by the run id in its environment."""
    wanted = f"PREFECT__FLOW_RUN_ID={flow_run_id}".encode()

    def process() -> tuple[int, int] | None:
        for entry in Path("/proc").iterdir():
            try:
                if entry.name.isdigit() and wanted in (entry / "environ").read_bytes().split(b"\0"):
                    return int(entry.name), int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
        return None

    return wait_until(process, timeout, f"a process running flow run {flow_run_id}")


def wait_for_text(paths: list[Path], text: str, timeout: float) -> Path:
    """The first of `paths` in which `text` appears."""
    return wait_until(
        lambda: next((path for path in paths if path.exists() and text in path.read_text(errors="replace")), None),
        timeout, f"{text!r} in one of {[str(p) for p in paths]}",
    )


def wait_state(flow_run_id, name: str, timeout: float):
    """The flow run once its state is `name`; fails early if it ends otherwise (a Crashed run may
    come back, so only Completed, Failed and Cancelled end the wait). A state that lasts less than
    the 1 s between reads (Crashed, before the automation reschedules it) may be missed."""
    with get_client(sync_client=True) as client:

        def reached():
            flow_run = client.read_flow_run(flow_run_id)
            if flow_run.state and flow_run.state.name == name:
                return flow_run
            assert flow_run.state is None or flow_run.state.name not in {"Completed", "Failed", "Cancelled"} - {name}, (
                flow_run.state
            )
            return None

        return wait_until(reached, timeout, f"flow run {flow_run_id} {name}", every=1)


def attempt_task_states(flow_run_id, attempt: int) -> list[tuple[str, str]]:
    """(task, state) of the task runs of one attempt of the flow run, in start order."""
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    runs = sorted((r for r in runs if r.flow_run_run_count == attempt), key=lambda r: r.start_time or r.expected_start_time)
    return [(run.name.rsplit("-", 1)[0], run.state.name if run.state else "") for run in runs]


def test_a_run_whose_worker_is_killed_mid_training_is_crashed_rescheduled_and_resumes_on_another_worker(
    live, config_dict, tmp_path
):
    # Three epochs; the run hangs after the second one's checkpoint, and its worker is killed there.
    config = {
        **config_dict, "output_root": str(tmp_path / "outputs"), "export": {"formats": []},
        "training": {**config_dict["training"], "epochs": 3},
    }
    live.ensure_worker()
    second = start_worker(POOL, live.env, live.home / "worker-recovery.log", cwd=REPO)
    workers = {live.worker.pid: live.worker, second.pid: second}
    try:
        with temporary_settings(updates={PREFECT_API_URL: live.api}), get_client(sync_client=True) as client:
            deployment = client.read_deployment_by_name("prune/manual")
            flow_run = client.create_flow_run_from_deployment(
                deployment.id, parameters={"config": config}, job_variables={"env": {"PRUNEFLOW_INJECT_FAULT": "hang@2"}}
            )
            pid, parent = flow_run_process(flow_run.id)
            assert parent in workers, (parent, list(workers))  # a process worker runs its flow runs as children
            victim = workers.pop(parent)
            wait_for_text([victim.log], "hanging (injected by PRUNEFLOW_INJECT_FAULT at the end of epoch 2)", 180)
            victim.kill()  # the worker and its flow run, at once: nothing reports the death

            killed = time.monotonic()
            done = wait_state(flow_run.id, "Completed", 450)  # marked Crashed, rescheduled, run again
            print(f"completed {time.monotonic() - killed:.0f} s after the kill")
            states = client.read_flow_run_states(flow_run.id)
    finally:
        second.stop()
        live.ensure_worker()

    assert done.run_count == 2
    names = [state.name for state in states]
    crashed = names.index("Crashed")
    assert names.count("Crashed") == 1 and names[crashed + 1] == "AwaitingRetry" and names[-2:] == ["Running", "Completed"]
    assert states[crashed].message.startswith(CRASH_MESSAGE) and "worker died" in states[crashed + 1].message
    (survivor,) = workers.values()
    assert str(flow_run.id) in survivor.log.read_text(errors="replace")  # the other worker took it
    # The second attempt reused every stage before training, and training resumed after epoch 2.
    second_attempt = dict(attempt_task_states(flow_run.id, 2))
    upstream = STAGES[: STAGES.index("prune_train")]
    assert {stage: second_attempt[stage] for stage in upstream} == dict.fromkeys(upstream, "Cached"), second_attempt
    assert second_attempt["check_inputs"] == second_attempt["prune_train"] == "Completed"
    (trained,) = (Path(config["output_root"]) / "artifacts" / "prune_train").glob("[!.]*/result.json")
    record = json.loads(trained.read_text())
    assert record["resumed_from_epoch"] == 2 and record["epochs"] == 3
    assert not list((Path(config["output_root"]) / "artifacts" / "prune_train").glob(".work-*"))  # checkpoint removed


def test_a_sweep_whose_server_restarts_mid_training_completes_and_writes_its_history_and_promotion_once(
    live, config_dict, tmp_path
):
    # The first training holds at the end of its second epoch, its GPU slot taken, while the server
    # restarts; the second training needs that slot back.
    release = tmp_path / "release"
    config = {
        **config_dict, "sweep": {"targets": [0.3, 0.6], "max_accuracy_drop": 100.0},
        "training": {**config_dict["training"], "epochs": 3},
    }
    live.worker.stop()  # this test's worker alone takes the run: it knows the release file
    worker = start_worker(POOL, {**live.env, RELEASE_ENV: str(release)}, live.home / "worker-restart.log", cwd=REPO)
    try:
        with temporary_settings(updates={PREFECT_API_URL: live.api}):
            flow_run = run_deployment(
                "sweep/manual", parameters={"config": config}, job_variables={"env": {FAULT_ENV: "wait@2"}}, timeout=0
            )
            wait_for_text([worker.log], f"pruneflow: waiting for {release}", 180)
            away = live.restart_server()
            with get_client(sync_client=True) as client:
                back = client.read_flow_run(flow_run.id).state  # what the new server knows of the run
            release.touch()
            done = wait_state(flow_run.id, "Completed", 300)
    finally:
        worker.stop()
        live.ensure_worker()
    print(f"server away {away:.1f} s; the run was {back.name} when it came back; run count {done.run_count}")
    assert back.name == "Running" and done.run_count == 1  # it carried on through the restart
    layout = OutputLayout(root=config["output_root"])
    assert json.loads((layout.promoted / "metrics.json").read_text())["flow_run_id"] == str(flow_run.id)
    assert len(list(layout.promoted_versions.iterdir())) == 1 and not layout.promotion_journal.exists()
    rows = read_history(layout.history)
    assert set(rows["flow_run_id"]) == {str(flow_run.id)} and len(rows) == 4  # Keras and int8, per target
    assert rows["promoted"].sum() == 1


def test_a_run_crashed_by_silence_more_often_than_the_budget_stays_crashed(live, config_dict, tmp_path):
    """The reschedule budget (2) is matched on the run count of the crash: a run crashed by the
    silence at its third start stays Crashed for a person to look at, while one crashed at its
    first goes back to Scheduled. States are set through the API (Pending is one no worker takes;
    each Running counts a start), as a worker and the silence automation would set them."""
    from prefect.states import Crashed, Pending, Running

    # What a worker would run, should it take the rescheduled run: a config that stops at its first check.
    broken = {**config_dict, "model": {**config_dict["model"], "baseline": str(tmp_path / "gone.h5")}}
    silence = f"{CRASH_MESSAGE} for 2 minutes: its worker or machine died; it will be scheduled again"
    with temporary_settings(updates={PREFECT_API_URL: live.api}), get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name("prune/manual")

        def started(times: int):
            run = client.create_flow_run_from_deployment(deployment.id, parameters={"config": broken}, state=Pending())
            for attempt in range(times):
                client.set_flow_run_state(run.id, Running(), force=True)
                if attempt < times - 1:
                    client.set_flow_run_state(run.id, Crashed(message="its process exited"), force=True)
            return run.id

        over, within = started(3), started(1)
        client.set_flow_run_state(over, Crashed(message=silence), force=True)
        client.set_flow_run_state(within, Crashed(message=silence), force=True)
        # The run within the budget is rescheduled: the automations have seen both crashes by then.
        wait_until(lambda: client.read_flow_run(within).state.name != "Crashed", 60, "the run within the budget rescheduled")
        assert client.read_flow_run(over).run_count == 3 and client.read_flow_run(within).run_count == 1
        assert client.read_flow_run(over).state.name == "Crashed"
        assert "AwaitingRetry" not in [state.name for state in client.read_flow_run_states(over)]
        names = [state.name for state in client.read_flow_run_states(within)]
        assert names[names.index("Crashed") + 1] == "AwaitingRetry", names
