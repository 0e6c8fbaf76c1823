"""The deployments load, validate and schedule without a server."""

import asyncio
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
import yaml
from prefect.flows import load_flow_from_entrypoint
from prefect.server.schemas.schedules import CronSchedule as ServerCronSchedule
from prefect.settings import PREFECT_API_URL, temporary_settings
from prefect.utilities.templating import find_placeholders

from pruneflow.deployments.gpu import (
    ENTRYPOINT,
    REPO,
    SWEEP_ENTRYPOINT,
    DeploymentSettings,
    build_deployments,
    default_config,
    kubernetes_base_job_template,
    main,
)
from pruneflow.tasks.specs.config import RunConfig


@pytest.fixture(scope="module")
def deployments():
    settings = DeploymentSettings(timezone="Europe/Paris", demo_dir=REPO / "demo")
    flows = {"flow": load_flow_from_entrypoint(str(REPO / ENTRYPOINT)), "sweep": load_flow_from_entrypoint(str(REPO / SWEEP_ENTRYPOINT))}
    return {f"{d.flow_name}/{d.name}": d for d in build_deployments(settings, **flows)}


def test_entrypoint_loads_the_prune_flow():
    flow = load_flow_from_entrypoint(str(REPO / ENTRYPOINT))
    assert flow.name == "prune"


def test_default_parameters_validate_against_the_config_model(deployments):
    assert sorted(deployments) == ["prune/manual", "prune/nightly", "sweep/manual", "sweep/nightly"]
    for name, deployment in deployments.items():
        flow = load_flow_from_entrypoint(str(REPO / (ENTRYPOINT if name.startswith("prune/") else SWEEP_ENTRYPOINT)))
        validated = flow.validate_parameters(deployment.parameters)
        assert isinstance(validated["config"], RunConfig)
        assert validated["config"].dataset.train_csv == (REPO / "demo" / "data" / "train.csv").resolve()


def test_nightly_runs_at_two_in_the_configured_time_zone(deployments):
    [schedule] = deployments["prune/nightly"].schedules
    assert schedule.schedule.cron == "0 2 * * *"
    assert schedule.schedule.timezone == "Europe/Paris"
    # The server's own schedule model parses it and computes the next run.
    server_schedule = ServerCronSchedule(cron=schedule.schedule.cron, timezone=schedule.schedule.timezone)
    [next_run] = asyncio.run(server_schedule.get_dates(n=1, start=datetime(2026, 1, 1, tzinfo=timezone.utc)))
    assert next_run.astimezone(ZoneInfo("Europe/Paris")).hour == 2
    assert next_run.astimezone(timezone.utc).hour == 1  # 02:00 in Paris is 01:00 UTC in winter
    assert deployments["prune/manual"].schedules == deployments["sweep/manual"].schedules == []
    [sweep] = deployments["sweep/nightly"].schedules
    assert (sweep.schedule.cron, sweep.schedule.timezone) == ("0 3 * * *", "Europe/Paris")  # after the prune run


def test_all_run_on_the_gpu_pool_with_their_devices(deployments):
    for deployment in deployments.values():
        assert deployment.work_pool_name == "pruneflow-gpu"
        # Their runs send a heartbeat every 30 s: pruneflow.deployments.recovery marks them Crashed when it stops.
        assert deployment.job_variables == {"env": {"CUDA_VISIBLE_DEVICES": "0", "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "30"}}
    # The UI's custom-run form is built from this schema.
    for name in ("prune/manual", "sweep/manual"):
        schema = deployments[name]._parameter_openapi_schema.model_dump()
        assert "config" in schema["properties"]


def test_process_template_lets_runs_choose_gpus_and_drills_only():
    from prefect.utilities.schema_tools import ValidationError, validate

    from pruneflow.deployments.gpu import process_base_job_template

    template = process_base_job_template()
    placeholders = {p.name for p in find_placeholders(template["job_configuration"])}
    assert placeholders <= set(template["variables"]["properties"])
    assert "command" not in template["job_configuration"] and "command" not in template["variables"]["properties"]
    schema = template["variables"]
    validate({"env": {"CUDA_VISIBLE_DEVICES": "1", "PRUNEFLOW_INJECT_FAULT": "hang@1"}}, schema, raise_on_error=True)
    for refused in ({"env": {"LD_PRELOAD": "/tmp/x.so"}}, {"command": "sh -c id"}, {"working_dir": "/"}):
        with pytest.raises(ValidationError):
            validate(refused, schema, raise_on_error=True)


def test_the_silence_that_marks_a_run_crashed_must_span_two_heartbeats():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="shorter than two heartbeats"):
        DeploymentSettings(heartbeat_seconds=60, silent_after=timedelta(seconds=90))
    assert DeploymentSettings(heartbeat_seconds=60, silent_after=timedelta(seconds=120)).reschedules == 2



@pytest.mark.parametrize(
    "settings, message",
    [
        ({"alert_webhook": "hooks.example.com/x"}, r"alert_webhook 'hooks.example.com/x' is not a URL"),
        ({"alert_block": "slack-webhook"}, r"alert_block 'slack-webhook': give the block as TYPE/NAME"),
        ({"alert_block": "slack-webhook/"}, r"alert_block 'slack-webhook/': give the block as TYPE/NAME"),
        ({"alert_block": "a/b/c"}, r"alert_block 'a/b/c': give the block as TYPE/NAME"),
        ({"alert_webhook": "https://hooks.example.com/x", "alert_block": "slack-webhook/team"},
         r"give alert_webhook or alert_block, not both"),
    ],
)
def test_alert_settings_that_cannot_reach_anyone_are_refused(settings, message):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=message):
        DeploymentSettings(**settings)


def test_one_alert_destination_is_accepted_as_given():
    assert DeploymentSettings(alert_webhook="http://127.0.0.1:9/hook").alert_webhook == "http://127.0.0.1:9/hook"
    assert DeploymentSettings(alert_block="slack-webhook/team").alert_block == "slack-webhook/team"
    assert DeploymentSettings().alert_webhook is None and DeploymentSettings().alert_block is None


def test_the_notification_block_is_asked_for_one_destination_exactly():
    from pruneflow.deployments.alerts import notification_block

    for webhook, block in ((None, None), ("http://127.0.0.1:9/hook", "slack-webhook/team")):
        with pytest.raises(ValueError, match="give either a webhook URL or an existing block, not both or neither"):
            notification_block(webhook, block)

def test_kubernetes_template_requests_gpus():
    template = kubernetes_base_job_template()
    container = template["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "{{ gpu_count }}"
    # Every placeholder in the job configuration is a declared variable, as Prefect requires.
    placeholders = {p.name for p in find_placeholders(template["job_configuration"])}
    assert placeholders <= set(template["variables"]["properties"])
    assert template["variables"]["properties"]["gpu_count"]["default"] == 1


def test_default_config_is_the_demo_under_the_given_folder(tmp_path):
    config = default_config(tmp_path)
    assert config.model.baseline == tmp_path.resolve() / "baseline.keras"
    assert config.pruning.final_sparsity == 0.8


def test_a_config_file_is_the_default_run_with_its_paths_from_its_folder(tmp_path, config_dict):
    (tmp_path / "team").mkdir()
    path = tmp_path / "team" / "pruneflow.yaml"
    path.write_text(yaml.safe_dump({**config_dict, "output_root": "outputs"}))
    config = default_config(tmp_path / "unused-demo", path)
    assert config.output_root == (tmp_path / "team" / "outputs").resolve()
    assert str(config.dataset.train_csv) == config_dict["dataset"]["train_csv"]


def test_a_config_file_that_does_not_load_is_named_before_the_server_is_called(tmp_path, capsys):
    missing = tmp_path / "nowhere.yaml"
    # No server is running at this URL: the error comes before any call to it.
    with temporary_settings(updates={PREFECT_API_URL: "http://127.0.0.1:9/api"}):
        assert main(["--config", str(missing)]) == 2
    assert capsys.readouterr().err == f"python -m pruneflow.deployments.gpu: error: {missing}: config file not found\n"
