"""The deployments against a real Prefect server and worker, started here on 127.0.0.1."""

import json
from pathlib import Path

import pytest
from prefect import get_client
from prefect.deployments import run_deployment
from prefect.settings import PREFECT_API_URL, temporary_settings
from prefect.states import AwaitingRetry

from tests.helpers.polling import wait_until
from tests.helpers.prefect import stage_states, task_runs


def wait_final(flow_run_id, timeout: float = 300):
    with get_client(sync_client=True) as client:
        return wait_until(
            lambda: (run := client.read_flow_run(flow_run_id)).state and run.state.is_final() and run,
            timeout, f"flow run {flow_run_id} final", every=1,
        )


def trigger(config_dict, env=None):
    """Start the `manual` deployment with custom parameters, as the UI's Run button does."""
    flow_run = run_deployment(
        "prune/manual", parameters={"config": config_dict}, job_variables={"env": env or {}}, timeout=0
    )
    return wait_final(flow_run.id)


def flow_run_logs(live, flow_run_id, until: str, timeout: float = 30) -> str:
    """The flow run's logs on the server, once one contains `until` (the worker ships them late)."""
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    with temporary_settings(updates={PREFECT_API_URL: live.api}), get_client(sync_client=True) as client:
        def text() -> str:
            logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
            return "\n".join(log.message for log in logs)

        try:
            return wait_until(lambda: until in (found := text()) and found, timeout, f"{until!r} in the logs", every=1)
        except TimeoutError:
            return text()


def summary_of(config_dict) -> dict:
    [path] = sorted(Path(config_dict["output_root"]).glob("runs/*/summary.json"))[-1:]
    return json.loads(path.read_text())


def test_a_transient_failure_completes_through_the_task_retry(live, config_dict):
    config_dict["training"] = {**config_dict["training"], "epochs": 3, "retries": 2, "retry_delay_seconds": 0}
    with temporary_settings(updates={PREFECT_API_URL: live.api}):
        flow_run = trigger(config_dict, env={"PRUNEFLOW_INJECT_FAULT": "resource_exhausted@1"})
        assert flow_run.state.is_completed(), flow_run.state.message
        [(_, state, attempts)] = [run for run in task_runs(flow_run.id) if run[0] == "prune_train"]
    assert (state, attempts) == ("Completed", 2)
    assert summary_of(config_dict)["training"]["resumed_from_epoch"] == 1


def test_a_failed_flow_run_retried_through_the_api_reuses_finished_stages(live, config_dict):
    config_dict["training"] = {**config_dict["training"], "epochs": 3, "retries": 0}
    with temporary_settings(updates={PREFECT_API_URL: live.api}):
        failed = trigger(config_dict, env={"PRUNEFLOW_INJECT_FAULT": "resource_exhausted@1"})
        assert failed.state.is_failed()
        # What the UI's Retry button does: schedule the same flow run again.
        with get_client(sync_client=True) as client:
            client.set_flow_run_state(failed.id, AwaitingRetry(), force=True)
        retried = wait_final(failed.id)
        assert retried.state.is_completed(), retried.state.message
        states = stage_states(failed.id)
    assert states["prepare_dataset"] == states["evaluate_baseline"] == "Cached"
    assert states["prune_train"] == "Completed"
    assert summary_of(config_dict)["training"]["resumed_from_epoch"] == 1


def test_the_server_accepts_a_kubernetes_pool_with_the_gpu_template(live):
    from prefect.client.schemas.actions import WorkPoolCreate

    from pruneflow.deployments.gpu import kubernetes_base_job_template

    with temporary_settings(updates={PREFECT_API_URL: live.api}), get_client(sync_client=True) as client:
        client.create_work_pool(
            WorkPoolCreate(name="pruneflow-k8s", type="kubernetes", base_job_template=kubernetes_base_job_template())
        )
        pool = client.read_work_pool("pruneflow-k8s")
    container = pool.base_job_template["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"] == {"nvidia.com/gpu": "{{ gpu_count }}"}
    assert pool.type == "kubernetes"


@pytest.mark.parametrize(
    "job_variables",
    [{"command": "touch /tmp/pruneflow-pwned"}, {"env": {"PRUNEFLOW_DATA_ROOTS": "/"}}, {"working_dir": "/"}],
    ids=["command", "env-roots", "working_dir"],
)
def test_a_run_cannot_set_the_command_or_lift_the_roots_through_job_variables(live, config_dict, job_variables):
    from prefect.exceptions import PrefectHTTPStatusError

    with temporary_settings(updates={PREFECT_API_URL: live.api}):
        with pytest.raises(PrefectHTTPStatusError) as refused:
            run_deployment("prune/manual", parameters={"config": config_dict}, job_variables=job_variables, timeout=0)
    assert refused.value.response.status_code == 422
    assert "Validation failed" in refused.value.response.text or "is not" in refused.value.response.text


def test_a_run_from_the_ui_cannot_read_a_model_outside_the_workers_roots(live, config_dict, tiny_baseline):
    import shutil
    import tempfile

    outside = Path(tempfile.mkdtemp(prefix="pruneflow-outside-"))  # not under the worker's roots
    try:
        shutil.copy(tiny_baseline, outside / "baseline.h5")
        config_dict["model"]["baseline"] = str(outside / "baseline.h5")
        with temporary_settings(updates={PREFECT_API_URL: live.api}):
            flow_run = trigger(config_dict)
            assert flow_run.state.is_failed()
            assert stage_states(flow_run.id) == {"check_inputs": "Failed"}
        assert f"model.baseline: {outside / 'baseline.h5'} is outside the folders this worker allows for models" in (
            flow_run.state.message
        )
        assert "from PRUNEFLOW_MODEL_ROOTS" in flow_run.state.message
        assert not (Path(config_dict["output_root"]) / "artifacts").exists()
        # The worker's flow-run logs, which the UI shows, carry the message without a traceback.
        logs = flow_run_logs(live, flow_run.id, until="is outside the folders this worker allows")
        assert "is outside the folders this worker allows for models" in logs and "Traceback" not in logs
    finally:
        shutil.rmtree(outside)


def test_a_sweep_started_from_the_ui_promotes_on_the_worker(live, config_dict):
    config_dict["sweep"] = {"targets": [0.3, 0.6], "max_accuracy_drop": 100.0}
    with temporary_settings(updates={PREFECT_API_URL: live.api}):
        flow_run = run_deployment("sweep/manual", parameters={"config": config_dict}, timeout=0)
        flow_run = wait_final(flow_run.id)
        assert flow_run.state.is_completed(), flow_run.state.message
        names = [name for name, _, _ in task_runs(flow_run.id)]
    assert names.count("prune_train") == 2 and names.count("prepare_dataset") == 1
    promoted = Path(config_dict["output_root"]) / "promoted"
    assert json.loads((promoted / "metrics.json").read_text())["flow_run_id"] == str(flow_run.id)
    assert len(list((Path(config_dict["output_root"]) / "history").glob("*.parquet"))) == 1
