"""Many presses of Run at once on the PostgreSQL-backed server, two workers, one GPU slot."""

from pathlib import Path

from prefect.settings import PREFECT_API_URL, temporary_settings

from pruneflow.deployments.gpu import REPO
from pruneflow.deployments.load import create_at_once, most_at_once, task_intervals, wait_for
from pruneflow.deployments.local import start_worker
from tests.deployments.conftest import POOL
from tests.helpers.prefect import task_runs

RUNS, CONFIGS = 3, 2  # more runs than workers, more configs than slots: the test's point at its least cost


def test_runs_pressed_at_once_on_two_workers_all_complete_and_never_train_two_at_once(live, config_dict, tmp_path):
    # Two configs (their own output roots: two real trainings), the first pressed twice, all at once.
    # No TFLite files: the runs are about the server and the GPU slot, not the exports.
    lean = {**config_dict, "export": {"formats": []}, "training": {**config_dict["training"], "epochs": 1}}
    configs = [{**lean, "output_root": str(tmp_path / f"outputs-{i}")} for i in range(CONFIGS)]
    second = start_worker(POOL, live.env, live.home / "worker-2.log", cwd=REPO)
    try:
        with temporary_settings(updates={PREFECT_API_URL: live.api}):
            pressed = create_at_once("prune/manual", [{"config": configs[i % CONFIGS]} for i in range(RUNS)])
            ids = pressed.ids
            outcome = wait_for(ids, timeout=600)
            states = [task_runs(flow_run) for flow_run in ids]  # once the server has recorded them all
            trainings = task_intervals(ids, "prune_train", state="Completed")  # a stored training takes no slot
    finally:
        second.stop()
    assert pressed.errors == [] and len(ids) == RUNS
    assert outcome.completed == RUNS and outcome.stuck == [] and outcome.missing == []
    trained = [state for runs in states for name, state, _ in runs if name == "prune_train"]
    assert len(trained) == RUNS and trained.count("Completed") == CONFIGS  # the others reused a training
    assert len(trainings) == CONFIGS and most_at_once(trainings) == 1  # one GPU slot: one training at a time
    for i in range(CONFIGS):
        assert len(list((Path(configs[i]["output_root"]) / "artifacts" / "prune_train").glob("[!.]*"))) == 1


def test_the_follower_names_runs_that_never_end_and_runs_the_server_never_made(live):
    """A flow run no worker will take (created without a deployment) is still Scheduled at the
    deadline: reported stuck, not completed; an id the server never created: reported missing."""
    from uuid import uuid4

    from prefect import flow, get_client
    from prefect.states import Scheduled

    @flow(name="pruneflow-never-picked")
    def never_picked():
        pass

    with temporary_settings(updates={PREFECT_API_URL: live.api}), get_client(sync_client=True) as client:
        waiting = client.create_flow_run(never_picked, state=Scheduled()).id
        unknown = uuid4()
        outcome = wait_for([waiting, unknown], timeout=1, poll=0.2)
    assert outcome.stuck == [waiting] and outcome.missing == [unknown]
    assert outcome.completed == 0 and sum(outcome.states.values()) == 0 and outcome.last_end is None
