"""Alerts as Prefect automations: a nightly run that failed, a sweep that regressed, a nightly that never completed.

Each automation sends its message through one Prefect notification block: a generic webhook
saved here (WEBHOOK_BLOCK, posting JSON {"subject": ..., "body": ...}), or a block the team
made (Slack, Microsoft Teams, Sendgrid email: see docs/alerts.md). `ensure_alerts` creates them or
brings them up to date (pruneflow.deployments.automations), so running it again leaves one of each;
`remove_alerts` deletes them.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from uuid import UUID

from pruneflow.deployments.automations import describe, sync_automations
from pruneflow.tasks.core.errors import PruneflowError
from pruneflow.tasks.decide.events import REGRESSION_EVENT

PREFIX = "pruneflow: "
WEBHOOK_BLOCK = "pruneflow-alerts"
WEBHOOK_BLOCK_TYPE = "custom-webhook"
# A nightly runs once a day: a day plus slack for a slow run or a late worker.
MISSING_NIGHTLY_AFTER = timedelta(hours=26)

FAILED = PREFIX + "nightly run failed"
REGRESSED = PREFIX + "sweep regressed"

FAILED_SUBJECT = "pruneflow: nightly run {{ flow_run.name }} of {{ flow.name }}/{{ deployment.name }} {{ flow_run.state.name }}"
FAILED_BODY = """\
The nightly flow run {{ flow_run.name }} of the deployment {{ flow.name }}/{{ deployment.name }} ended \
{{ flow_run.state.name }}:
{{ flow_run.state.message }}
{% set link = flow_run|ui_url %}{% if link %}Its logs: {{ link }}{% endif %}"""

REGRESSED_SUBJECT = "pruneflow: sweep {{ flow_run.name }} regressed"
REGRESSED_BODY = """\
The sweep {{ flow_run.name }} regressed against the last run of its config: {{ event.payload.regression }}.
{% set p = event.payload %}{% if p.zip_bytes is not none %}Promoted: sparsity {{ p.target }}, format {{ p.format }}, \
accuracy {{ "%.4f"|format(p.accuracy) }}, {{ "{:,}".format(p.zip_bytes) }} B zipped, latency \
{% if p.latency_ms is not none %}{{ "%.3f"|format(p.latency_ms) }} ms{% else %}not measured{% endif %}.\
{% else %}No file promoted.{% endif %} {{ p.failed_targets }} of {{ p.targets }} targets failed; decision: \
{{ p.decision or "none" }}.
History: {{ p.history }}"""


def missing_name(deployment: str) -> str:
    return f"{PREFIX}no completed {deployment}"


def notification_block(webhook: str | None, block: str | None) -> UUID:
    """The id of the block alerts go through: WEBHOOK_BLOCK saved for `webhook`, or the existing `block` (TYPE/NAME)."""
    from prefect import get_client
    from prefect.blocks.notifications import CustomWebhookNotificationBlock
    from prefect.exceptions import ObjectNotFound

    if (webhook is None) == (block is None):
        raise ValueError("give either a webhook URL or an existing block, not both or neither")
    if webhook is not None:
        hook = CustomWebhookNotificationBlock(
            name=WEBHOOK_BLOCK, url=webhook, json_data={"subject": "{{subject}}", "body": "{{body}}"}
        )
        return hook.save(WEBHOOK_BLOCK, overwrite=True)
    block_type, _, name = block.partition("/")
    with get_client(sync_client=True) as client:
        try:
            document = client.read_block_document_by_name(name, block_type, include_secrets=False)
        except ObjectNotFound:
            raise PruneflowError(
                f"alert_block: there is no block {block} on the Prefect server; give one that `prefect block ls` "
                "lists, as TYPE/NAME (e.g. slack-webhook/team-alerts), or create it in the UI (Blocks > +)."
            ) from None
    if "notify" not in document.block_schema.capabilities:
        raise PruneflowError(
            f"alert_block: {block} is not a notification block (it cannot send a message); give a Slack "
            "webhook, Microsoft Teams, email or Custom Webhook block."
        )
    return document.id


def alert_automations(nightly: Mapping[str, UUID], block_id: UUID, missing_after: timedelta) -> list:
    """pruneflow's automations, not yet applied: one for failed or crashed nightly runs, one for
    regressions, and one per nightly deployment for a window without a completed run.

    Args:
        nightly: the nightly deployments' ids by name (FLOW/DEPLOYMENT).
    """
    from prefect.events.actions import SendNotification
    from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture

    def notify(subject: str, body: str) -> list:
        return [SendNotification(block_document_id=block_id, subject=subject, body=body)]

    deployments = [f"prefect.deployment.{deployment_id}" for deployment_id in nightly.values()]
    automations = [
        AutomationCore(
            name=FAILED, description=f"A flow run of {', '.join(nightly)} ended Failed or Crashed.",
            trigger=EventTrigger(
                expect={"prefect.flow-run.Failed", "prefect.flow-run.Crashed"},
                match={"prefect.resource.id": "prefect.flow-run.*"},
                match_related={"prefect.resource.role": "deployment", "prefect.resource.id": deployments},
                for_each={"prefect.resource.id"}, posture=Posture.Reactive, threshold=1, within=0,
            ),
            actions=notify(FAILED_SUBJECT, FAILED_BODY),
        ),
        AutomationCore(
            name=REGRESSED, description=f"A sweep sent {REGRESSION_EVENT}: its promoted file got worse, or targets failed.",
            trigger=EventTrigger(
                expect={REGRESSION_EVENT}, match={"prefect.resource.id": "pruneflow.history.*"},
                for_each={"prefect.resource.id"}, posture=Posture.Reactive, threshold=1, within=0,
            ),
            actions=notify(REGRESSED_SUBJECT, REGRESSED_BODY),
        ),
    ]
    window = describe(missing_after)
    for name, deployment_id in nightly.items():
        automations.append(AutomationCore(
            name=missing_name(name), description=f"No flow run of {name} completed within {window}.",
            trigger=EventTrigger(
                expect={"prefect.flow-run.Completed"}, match={"prefect.resource.id": "prefect.flow-run.*"},
                match_related={"prefect.resource.role": "deployment", "prefect.resource.id": f"prefect.deployment.{deployment_id}"},
                posture=Posture.Proactive, threshold=1, within=missing_after,
            ),
            actions=notify(
                f"pruneflow: no completed run of {name} in {window}",
                f"The deployment {name} has had no Completed flow run in the last {window}. Check that a worker "
                "polls its work pool, that the deployment and its schedule are not paused, and its latest runs in the UI.",
            ),
        ))
    return automations


def ensure_alerts(
    nightly: Mapping[str, UUID], *, webhook: str | None = None, block: str | None = None,
    missing_after: timedelta = MISSING_NIGHTLY_AFTER,
) -> dict[str, UUID]:
    """Create pruneflow's alerts on the current Prefect API, or bring them up to date.

    An automation that is already as wanted is left alone, so that re-applying the deployments
    does not restart a missing-nightly window; copies and automations of deployments no longer
    given are deleted.

    Args:
        nightly: the nightly deployments' ids by name (FLOW/DEPLOYMENT).
        webhook, block: where the messages go: a URL, or an existing notification block as TYPE/NAME.
        missing_after: how long a nightly deployment may go without a Completed run.

    Returns:
        The automations' ids by name.
    """
    return sync_automations(PREFIX, alert_automations(nightly, notification_block(webhook, block), missing_after))


def remove_alerts() -> None:
    """Delete pruneflow's automations and its webhook block (a team's own block stays)."""
    from prefect import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        for automation in client.read_automations():
            if automation.name.startswith(PREFIX):
                client.delete_automation(automation.id)
        try:
            client.delete_block_document(client.read_block_document_by_name(WEBHOOK_BLOCK, WEBHOOK_BLOCK_TYPE).id)
        except ObjectNotFound:
            pass


def main(argv: list[str] | None = None) -> int:
    """`python -m pruneflow.deployments.alerts --remove`: turn pruneflow's alerts off on the current Prefect API."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m pruneflow.deployments.alerts", description=main.__doc__)
    parser.add_argument("--remove", action="store_true", required=True, help="delete the automations and the webhook block")
    parser.parse_args(argv)
    remove_alerts()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
