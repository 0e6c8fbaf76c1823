"""The deployments, as code: this module is their source of truth (there is no prefect.yaml).

Two deployments of the `prune` flow and two of the `sweep` flow, all on one work pool meant
for GPU workers:
- `nightly`, on a cron schedule (02:00 for prune, 03:00 for sweep by default, in a
  configurable time zone);
- `manual`, without a schedule, for runs started from the UI with custom parameters.
Their default parameters (the UI form's defaults) are the run of `config`, a pruneflow.yaml, or
without one the bundled demo, prepared by `pruneflow demo` under `demo_dir` on the worker's
machine. Training stages take a slot of a concurrency limit,
`gpu_slots` wide (one training per GPU, however many runs and workers). A run whose worker dies
is marked Crashed when its heartbeats stop and scheduled again (pruneflow.deployments.recovery). With an
alert webhook or block, the nightly deployments also get alerts (pruneflow.deployments.alerts).
"""

from __future__ import annotations

import json
import sys
from datetime import timedelta
from pathlib import Path

import yaml
from prefect.schedules import Cron
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from pruneflow.deployments.alerts import MISSING_NIGHTLY_AFTER, ensure_alerts
from pruneflow.deployments.recovery import HEARTBEAT, HEARTBEAT_ENV, RESCHEDULES, SILENT_AFTER, ensure_recovery
from pruneflow.tasks.core.errors import PruneflowError
from pruneflow.tasks.core.stage import TRAINING_TAG
from pruneflow.tasks.demo import demo_config_text
from pruneflow.tasks.specs.config import RunConfig, load_config, parse_config

REPO = Path(__file__).resolve().parents[1]
ENTRYPOINT = "flows/prune.py:prune_flow"
SWEEP_ENTRYPOINT = "flows/sweep.py:sweep_flow"
KUBERNETES_TEMPLATE = Path(__file__).with_name("kubernetes-gpu.json")


class DeploymentSettings(BaseModel):
    """Where and when the deployments run."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    work_pool: str = Field("pruneflow-gpu", description="Work pool the GPU workers poll.")
    cron: str = Field("0 2 * * *", description="Schedule of the nightly deployment.")
    sweep_cron: str = Field("0 3 * * *", description="Schedule of the nightly sweep.")
    timezone: str = Field("UTC", description="Time zone of the cron schedule, e.g. Europe/Paris.")
    gpu_devices: str = Field("0", description="CUDA_VISIBLE_DEVICES for flow runs on a process worker.")
    gpu_slots: int = Field(
        1, ge=1, description="Trainings at once across all runs and workers: one per GPU (a concurrency limit on the "
        f"training stages' tag, {TRAINING_TAG}).",
    )
    heartbeat_seconds: int = Field(
        HEARTBEAT, ge=30, description=f"Seconds between a flow run's heartbeats ({HEARTBEAT_ENV}; at least 30).",
    )
    silent_after: timedelta = Field(
        SILENT_AFTER,
        description="A run with no heartbeat for this long (HH:MM:SS, at least two heartbeats) is marked Crashed: its "
        "worker died.",
    )
    reschedules: int = Field(
        RESCHEDULES, ge=0, description="How many times a run whose worker died is scheduled again (0: never).",
    )
    demo_dir: Path = Field(REPO / "demo", description="Where `pruneflow demo` put the demo dataset.")
    config: Path | None = Field(
        None,
        description="A pruneflow.yaml whose run the deployments make by default (the nightly's run, the UI form's "
        "defaults), its relative paths taken from its folder; without it, the demo under demo_dir.",
    )
    alert_webhook: str | None = Field(
        None,
        description="URL to post alerts to as JSON {subject, body} (docs/alerts.md); without it or alert_block, no alerts.",
    )
    alert_block: str | None = Field(
        None,
        description="Existing notification block to send alerts through instead, as TYPE/NAME, e.g. slack-webhook/team.",
    )
    alert_missing_after: timedelta = Field(
        MISSING_NIGHTLY_AFTER, ge=timedelta(seconds=10),
        description="Alert when a nightly deployment has had no completed run for this long (HH:MM:SS, at least 00:00:10).",
    )

    @field_validator("alert_webhook")
    @classmethod
    def webhook_is_a_url(cls, url: str | None) -> str | None:
        if url is not None and not url.startswith(("http://", "https://")):
            raise ValueError(f"alert_webhook {url!r} is not a URL: give the http:// or https:// address to post alerts to")
        return url

    @field_validator("alert_block")
    @classmethod
    def block_is_type_and_name(cls, block: str | None) -> str | None:
        if block is not None and not (block.count("/") == 1 and all(block.split("/"))):
            raise ValueError(
                f"alert_block {block!r}: give the block as TYPE/NAME, as `prefect block ls` lists it, e.g. slack-webhook/team"
            )
        return block

    @model_validator(mode="after")
    def silence_spans_heartbeats(self) -> DeploymentSettings:
        if self.silent_after.total_seconds() < 2 * self.heartbeat_seconds:
            raise ValueError(
                f"silent_after {self.silent_after} is shorter than two heartbeats ({2 * self.heartbeat_seconds} s): "
                "live runs would be marked Crashed; make it longer or heartbeat_seconds shorter"
            )
        return self

    @model_validator(mode="after")
    def one_alert_destination(self) -> DeploymentSettings:
        if self.alert_webhook and self.alert_block:
            raise ValueError("give alert_webhook or alert_block, not both: alerts go through one notification block")
        return self


def default_config(demo_dir: Path, config: Path | None = None) -> RunConfig:
    """The deployments' default run: the config file `config`, or the demo config with its
    paths taken from `demo_dir`."""
    if config is not None:
        return load_config(config)
    return parse_config(yaml.safe_load(demo_config_text()), source="tasks/demo.yaml", base_dir=demo_dir.resolve())


# The only environment variables a deployment or a run started from the UI may set for a flow
# run: the GPUs, the heartbeat, and fault drills. Anything else (PRUNEFLOW_*_ROOTS, PYTHONPATH, LD_PRELOAD) is
# refused by the server, as are the `command` and `working_dir` job variables.
RUN_ENV_ALLOWED = ("CUDA_VISIBLE_DEVICES", HEARTBEAT_ENV, "PRUNEFLOW_INJECT_FAULT")


def process_base_job_template() -> dict:
    """A process work pool's base job template that a run's job variables cannot turn into code.

    Prefect's default lets every run, including a custom run from the UI, set the `command` the
    worker executes and any environment variable: a way to run anything on the GPU host, or to
    lift the folder limits of pruneflow.tasks.preflight.check_inputs. This one drops `command` and `working_dir`, allows
    only RUN_ENV_ALLOWED in `env`, and makes the server refuse any other job variable.
    """
    from prefect.workers.process import ProcessWorker

    template = ProcessWorker.get_default_base_job_template()
    for name in ("command", "working_dir"):
        template["variables"]["properties"].pop(name)
        template["job_configuration"].pop(name)
    template["variables"]["properties"]["env"]["propertyNames"] = {"enum": list(RUN_ENV_ALLOWED)}
    template["variables"]["properties"]["env"]["description"] = (
        f"Environment variables for the flow run; only {', '.join(RUN_ENV_ALLOWED)}."
    )
    template["variables"]["additionalProperties"] = False
    return template


def process_job_variables(settings: DeploymentSettings) -> dict:
    """Job variables for a process worker: which GPU(s) its flow runs may use, how often they send a heartbeat."""
    return {"env": {"CUDA_VISIBLE_DEVICES": settings.gpu_devices, HEARTBEAT_ENV: str(settings.heartbeat_seconds)}}


def build_deployments(settings: DeploymentSettings | None = None, flow=None, sweep=None) -> list:
    """The `nightly` and `manual` deployments of the prune flow and of the sweep flow, not yet
    applied to a server.

    Args:
        flow, sweep: the flows to deploy; default: loaded from this repository's source, so
            that a process worker runs them from here.
    """
    settings = settings or DeploymentSettings()
    if flow is None:
        from pruneflow.flows.prune import prune_flow

        flow = prune_flow.from_source(source=str(REPO), entrypoint=ENTRYPOINT)
    if sweep is None:
        from pruneflow.flows.sweep import sweep_flow

        sweep = sweep_flow.from_source(source=str(REPO), entrypoint=SWEEP_ENTRYPOINT)
    parameters = {"config": default_config(settings.demo_dir, settings.config).model_dump(mode="json")}
    common = dict(
        parameters=parameters, work_pool_name=settings.work_pool,
        job_variables=process_job_variables(settings), tags=["pruneflow"],
    )
    return [
        flow.to_deployment(
            name="nightly", schedule=Cron(settings.cron, timezone=settings.timezone),
            description="Prune the configured model every night.", **common,
        ),
        flow.to_deployment(
            name="manual", description="Prune with parameters chosen at run time (Custom run in the UI).", **common,
        ),
        sweep.to_deployment(
            name="nightly", schedule=Cron(settings.sweep_cron, timezone=settings.timezone),
            description="Sweep the target sparsities every night, promote within the gate, record the history.",
            **common,
        ),
        sweep.to_deployment(
            name="manual", description="Sweep with parameters chosen at run time (Custom run in the UI).", **common,
        ),
    ]


def kubernetes_base_job_template() -> dict:
    """A Kubernetes work pool's base job template whose jobs request `gpu_count` NVIDIA GPUs.

    Prefect's Kubernetes template has no GPU variable; this one adds `nvidia.com/gpu` to the
    container's resource limits. Create such a pool with
    `prefect work-pool create NAME --type kubernetes --base-job-template deployments/kubernetes-gpu.json`.
    """
    return json.loads(KUBERNETES_TEMPLATE.read_text())


def ensure_training_limit(slots: int) -> None:
    """At most `slots` training stages at once, whichever flow run or worker runs them: Prefect's
    concurrency limit on TRAINING_TAG (created, or set to `slots`). A training waits for a slot;
    a worker that dies frees its slot when the slot's lease runs out."""
    from prefect import get_client

    with get_client(sync_client=True) as client:
        client.create_concurrency_limit(tag=TRAINING_TAG, concurrency_limit=slots)


def ensure_process_pool(name: str) -> None:
    """Create the process work pool, or give an existing process pool the locked-down template."""
    from prefect import get_client
    from prefect.client.schemas.actions import WorkPoolCreate, WorkPoolUpdate
    from prefect.exceptions import ObjectNotFound

    template = process_base_job_template()
    with get_client(sync_client=True) as client:
        try:
            pool = client.read_work_pool(name)
        except ObjectNotFound:
            client.create_work_pool(WorkPoolCreate(name=name, type="process", base_job_template=template))
            return
        if pool.type == "process" and pool.base_job_template != template:
            client.update_work_pool(name, WorkPoolUpdate(base_job_template=template))


def apply(settings: DeploymentSettings | None = None) -> list:
    """Create the work pool if needed, the training concurrency limit, apply the four deployments
    to the current Prefect API, the automations that reschedule the runs of dead workers, and the
    alerts if the settings name where they go."""
    from prefect import get_client
    from prefect.deployments.runner import deploy

    settings = settings or DeploymentSettings()
    deployments = build_deployments(settings)  # first: a config file that does not load changes nothing
    ensure_process_pool(settings.work_pool)
    ensure_training_limit(settings.gpu_slots)
    ids = deploy(
        *deployments, work_pool_name=settings.work_pool,
        build=False, push=False, print_next_steps_message=False, ignore_warnings=True,
    )
    # By name: deploy's list of ids skips a deployment it failed to apply.
    names = [f"{d.flow_name}/{d.name}" for d in deployments]
    with get_client(sync_client=True) as client:
        applied = {name: client.read_deployment_by_name(name).id for name in names}
    ensure_recovery(applied.values(), settings.silent_after, settings.reschedules)
    if settings.alert_webhook or settings.alert_block:
        nightly_ids = {name: deployment_id for name, deployment_id in applied.items() if name.endswith("/nightly")}
        ensure_alerts(
            nightly_ids, webhook=settings.alert_webhook, block=settings.alert_block,
            missing_after=settings.alert_missing_after,
        )
    return ids


def main(argv: list[str] | None = None) -> int:
    """`python -m pruneflow.deployments.gpu`: create the pool if needed, apply the four deployments and, with
    --alert-webhook or --alert-block, the alerts."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m pruneflow.deployments.gpu", description=main.__doc__)
    for name, field in DeploymentSettings.model_fields.items():
        parser.add_argument(f"--{name.replace('_', '-')}", default=field.default, help=field.description)
    settings = DeploymentSettings(**vars(parser.parse_args(argv)))
    try:
        apply(settings)
    except PruneflowError as error:
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
