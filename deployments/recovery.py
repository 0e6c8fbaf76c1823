"""Runs whose worker died: marked Crashed once their heartbeats stop, then scheduled again.

A worker killed at 3 a.m. (SIGKILL, a machine lost) cannot report anything: its flow run would
stay Running for ever. So every flow run of a pruneflow deployment sends a heartbeat every
`heartbeat` seconds (Prefect's PREFECT_FLOWS_HEARTBEAT_FREQUENCY, set in the deployments' job
variables), and two automations, applied with the deployments, act on the server:

- SILENT: a run of these deployments that has sent no heartbeat, and reached no final state, for
  `silent_after` is marked Crashed with a message starting CRASH_MESSAGE.
- RESCHEDULE: a run Crashed with that message is set to Scheduled (AwaitingRetry) again, at
  most `reschedules` times (matched on the run count the server puts on the event, so a run
  that keeps killing its workers stops coming back). Any worker of the pool picks it up; its
  stored stages are Cached and prune-training resumes after the last epoch it checkpointed.

A run that crashes for another reason (its process exited, its infrastructure never started) is
not rescheduled: that is for a person to look at, and the nightly alerts say so.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import timedelta
from uuid import UUID

from pruneflow.deployments.automations import describe, sync_automations

PREFIX = "pruneflow recovery: "
SILENT = PREFIX + "crash runs whose heartbeats stopped"
RESCHEDULE = PREFIX + "reschedule runs whose worker died"
CRASH_MESSAGE = "pruneflow: no heartbeat"
HEARTBEAT_ENV = "PREFECT_FLOWS_HEARTBEAT_FREQUENCY"
HEARTBEAT = 30  # seconds; Prefect's least
SILENT_AFTER = timedelta(minutes=2)  # four heartbeats missed
RESCHEDULES = 2
FINAL_EVENTS = {f"prefect.flow-run.{state}" for state in ("Completed", "Failed", "Cancelled", "Crashed")}


def recovery_automations(
    deployments: Iterable[UUID], silent_after: timedelta = SILENT_AFTER, reschedules: int = RESCHEDULES
) -> list:
    """The two automations, not yet applied, for the flow runs of `deployments`."""
    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import ChangeFlowRunState
    from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture

    related = {
        "prefect.resource.role": "deployment",
        "prefect.resource.id": [f"prefect.deployment.{deployment_id}" for deployment_id in deployments],
    }
    window = describe(silent_after)
    return [
        AutomationCore(
            name=SILENT, description=f"A pruneflow flow run sent no heartbeat for {window} and is not final.",
            trigger=EventTrigger(
                after={"prefect.flow-run.heartbeat"}, expect={"prefect.flow-run.heartbeat", *FINAL_EVENTS},
                match={"prefect.resource.id": "prefect.flow-run.*"}, match_related=related,
                for_each={"prefect.resource.id"}, posture=Posture.Proactive, threshold=1, within=silent_after,
            ),
            actions=[ChangeFlowRunState(
                state=StateType.CRASHED,
                message=f"{CRASH_MESSAGE} for {window}: its worker or machine died; it will be scheduled again",
            )],
        ),
        AutomationCore(
            name=RESCHEDULE,
            description=f"A pruneflow flow run crashed by '{SILENT}' goes back to Scheduled, up to {reschedules} times.",
            trigger=EventTrigger(
                expect={"prefect.flow-run.Crashed"},
                match={
                    "prefect.resource.id": "prefect.flow-run.*", "prefect.state-message": f"{CRASH_MESSAGE}*",
                    "prefect.run-count": [str(count) for count in range(1, reschedules + 1)],
                },
                match_related=related, for_each={"prefect.resource.id"}, posture=Posture.Reactive, threshold=1,
                within=0,
            ),
            actions=[ChangeFlowRunState(
                state=StateType.SCHEDULED, name="AwaitingRetry",
                message="pruneflow: scheduled again after its worker died; stored stages are reused and training "
                "resumes from its last epoch checkpoint",
            )],
        ),
    ]


def ensure_recovery(
    deployments: Iterable[UUID], silent_after: timedelta = SILENT_AFTER, reschedules: int = RESCHEDULES
) -> dict[str, UUID]:
    """Create the two automations on the current Prefect API or bring them up to date; their ids
    by name. With `reschedules` 0, runs are marked Crashed but not scheduled again."""
    wanted = recovery_automations(deployments, silent_after, reschedules)
    return sync_automations(PREFIX, wanted if reschedules else wanted[:1])
