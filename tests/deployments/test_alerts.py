"""pruneflow's alerts on a real Prefect server and worker: what reaches a webhook started here, and what does not."""

import contextlib
import json
import threading
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from prefect import get_client
from prefect.deployments import run_deployment
from prefect.events.schemas.automations import AutomationCore
from prefect.settings import PREFECT_API_URL, temporary_settings

from pruneflow.deployments.alerts import (
    FAILED,
    PREFIX,
    REGRESSED,
    WEBHOOK_BLOCK,
    WEBHOOK_BLOCK_TYPE,
    ensure_alerts,
    missing_name,
    remove_alerts,
)
from pruneflow.deployments.gpu import apply
from pruneflow.deployments.recovery import PREFIX as RECOVERY
from pruneflow.deployments.recovery import RESCHEDULE, SILENT
from pruneflow.tasks.core.errors import PruneflowError
from tests.deployments.test_server import wait_final
from tests.helpers.polling import wait_until

NIGHTLY = ("prune/nightly", "sweep/nightly")


class Receiver:
    """A webhook on 127.0.0.1 that keeps the JSON bodies posted to it."""

    def __init__(self):
        self.messages: list[dict] = []
        messages = self.messages

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                messages.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}/alerts"

    def mentioning(self, text: str) -> list[dict]:
        return [m for m in list(self.messages) if text in f"{m['subject']}\n{m['body']}"]

    def wait_for(self, text: str, timeout: float = 60) -> dict:
        """The first message whose subject or body holds `text`, once it came."""
        try:
            return wait_until(lambda: self.mentioning(text), timeout, f"a message mentioning {text!r}")[0]
        except TimeoutError as error:
            raise AssertionError(f"{error}; received: {self.messages}") from None


@pytest.fixture(scope="module")
def receiver():
    receiver = Receiver()
    receiver.thread.start()
    yield receiver
    receiver.server.shutdown()
    receiver.server.server_close()
    receiver.thread.join(timeout=10)


@pytest.fixture(scope="module")
def nightly(live, receiver):
    """The nightly deployments' ids by name, applied again with alerts posting to the receiver; at
    the end the alerts are removed, so that a missing-nightly window does not fire in later tests."""
    with temporary_settings(updates={PREFECT_API_URL: live.api}):
        apply(live.settings(alert_webhook=receiver.url))
        with get_client(sync_client=True) as client:
            ids = {name: client.read_deployment_by_name(name).id for name in NIGHTLY}
    try:
        yield ids
    finally:
        with temporary_settings(updates={PREFECT_API_URL: live.api}):
            remove_alerts()
            with get_client(sync_client=True) as client:
                names = [a.name for a in client.read_automations()]
            assert not [name for name in names if name.startswith(PREFIX)]
            assert {name for name in names if name.startswith(RECOVERY)} == {SILENT, RESCHEDULE}  # not alerts


@contextlib.contextmanager
def flows_in_this_process(live):
    """Run flows in this process against the live server, then drain what they left to send.

    Prefect keeps one events worker and one log worker per process, bound to the server of the
    moment they started: undrained, they would go on sending the later tests' events and logs
    (task runs are recorded from events) to this server after it stops.
    """
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    with temporary_settings(updates={PREFECT_API_URL: live.api}):
        try:
            yield
        finally:
            EventsWorker.drain_all()
            APILogWorker.drain_all()


def ours(client) -> list:
    return [a for a in client.read_automations() if a.name.startswith(PREFIX)]


def trigger_ids(client, automations: dict) -> dict:
    """The server's id of each automation's trigger, which it renews on every update."""
    return {
        name: client.request("GET", "/automations/{id}", path_params={"id": automation_id}).json()["trigger"]["id"]
        for name, automation_id in automations.items()
    }


def test_applying_the_alerts_again_leaves_one_of_each_updated_in_place(live, receiver, nightly):
    with temporary_settings(updates={PREFECT_API_URL: live.api}), get_client(sync_client=True) as client:
        before = {a.name: a.id for a in ours(client)}
        [failed] = [a for a in ours(client) if a.name == FAILED]
        client.create_automation(AutomationCore(**failed.model_dump(exclude={"id"})))  # a stray copy
        first = ensure_alerts(nightly, webhook=receiver.url, missing_after=timedelta(hours=30))
        triggers = trigger_ids(client, first)
        second = ensure_alerts(nightly, webhook=receiver.url, missing_after=timedelta(hours=30))
        # Left alone when already as wanted: an update would restart the missing-nightly window.
        assert trigger_ids(client, second) == triggers
        automations = ours(client)
        block = client.read_block_document_by_name(WEBHOOK_BLOCK, WEBHOOK_BLOCK_TYPE)
        blocks = [b for b in client.read_block_documents() if b.name == WEBHOOK_BLOCK]
        ensure_alerts(nightly, webhook=receiver.url)  # back to the default window
    assert sorted(a.name for a in automations) == sorted([FAILED, REGRESSED, *map(missing_name, NIGHTLY)])
    assert first == second == {a.name: a.id for a in automations}
    assert {name: first[name] for name in first if name != FAILED} == {
        name: before[name] for name in before if name != FAILED
    }  # updated, not replaced
    [missing] = [a for a in automations if a.name == missing_name("sweep/nightly")]
    assert missing.trigger.within == timedelta(hours=30)
    assert missing.trigger.match_related.root["prefect.resource.id"] == f"prefect.deployment.{nightly['sweep/nightly']}"
    assert {a.actions[0].block_document_id for a in automations} == {block.id}
    assert len(blocks) == 1 and block.data["url"] == receiver.url
    assert block.data["json_data"] == {"subject": "{{subject}}", "body": "{{body}}"}


def test_alerts_go_through_an_existing_notification_block_and_refuse_one_that_cannot_notify(live, receiver, nightly):
    from prefect.blocks.notifications import CustomWebhookNotificationBlock
    from prefect.blocks.system import Secret

    with temporary_settings(updates={PREFECT_API_URL: live.api}), get_client(sync_client=True) as client:
        team = CustomWebhookNotificationBlock(name="team", url=receiver.url, json_data={"text": "{{subject}}"})
        team_id = team.save("team-alerts", overwrite=True)
        secret_id = Secret(value="not a notifier").save("team-secret", overwrite=True)
        try:
            before = {a.name: a.id for a in ours(client)}
            assert ensure_alerts(nightly, block="custom-webhook/team-alerts") == before
            assert {a.actions[0].block_document_id for a in ours(client)} == {team_id}
            with pytest.raises(PruneflowError, match="secret/team-secret is not a notification block"):
                ensure_alerts(nightly, block="secret/team-secret")
            with pytest.raises(PruneflowError, match="no block slack-webhook/nobody on the Prefect server"):
                ensure_alerts(nightly, block="slack-webhook/nobody")
            assert {a.actions[0].block_document_id for a in ours(client)} == {team_id}  # refused before any change
        finally:
            ensure_alerts(nightly, webhook=receiver.url)
            client.delete_block_document(team_id)
            client.delete_block_document(secret_id)


def test_a_failed_nightly_run_is_sent_with_its_name_and_message_and_a_failed_manual_run_is_not(
    live, receiver, nightly, config_dict, tmp_path
):
    config_dict["model"]["baseline"] = str(tmp_path / "no-such-model.h5")
    with temporary_settings(updates={PREFECT_API_URL: live.api}):
        # The manual run fails first, the nightly one after it: the automation sees the manual run's
        # Failed event before the nightly's, so once the nightly's message has come, one for the
        # manual run would have come before it (an absence proven by the event after it, not a wait).
        failed_manual = wait_final(run_deployment("sweep/manual", parameters={"config": config_dict}, timeout=0).id,
                                   timeout=120)
        failed_nightly = wait_final(run_deployment("sweep/nightly", parameters={"config": config_dict}, timeout=0).id,
                                    timeout=120)
    assert failed_nightly.state.is_failed() and failed_manual.state.is_failed()
    assert "no-such-model.h5" in failed_nightly.state.message
    message = receiver.wait_for(failed_nightly.name)
    assert message["subject"] == f"pruneflow: nightly run {failed_nightly.name} of sweep/nightly Failed"
    assert failed_nightly.state.message in message["body"]
    assert f"/runs/flow-run/{failed_nightly.id}" in message["body"]
    assert receiver.mentioning(failed_manual.name) == []


def test_a_nightly_without_a_completed_run_within_the_window_is_sent(live, receiver, nightly):
    with temporary_settings(updates={PREFECT_API_URL: live.api}):
        ensure_alerts(nightly, webhook=receiver.url, missing_after=timedelta(seconds=10))
        try:
            # The server loads the change and evaluates proactive triggers every 5 s each, then
            # waits out the window.
            messages = [receiver.wait_for(f"of {name} in 10 seconds", timeout=60) for name in NIGHTLY]
        finally:
            ensure_alerts(nightly, webhook=receiver.url)
    for name, message in zip(NIGHTLY, messages):
        assert message["subject"] == f"pruneflow: no completed run of {name} in 10 seconds"
        assert f"The deployment {name} has had no Completed flow run in the last 10 seconds" in message["body"]


def test_a_sweep_that_regressed_is_sent_with_its_name_and_figures(live, receiver, nightly, config_dict):
    from pruneflow.flows.sweep import sweep_flow
    from pruneflow.tasks.specs.config import parse_config

    first = parse_config({**config_dict, "sweep": {"targets": [0.3, 0.6], "max_accuracy_drop": 100.0}})
    # The same line of runs (its `sweep` section aside), promoting the bigger 0.3 file: with the
    # champion removed by hand there is nothing for it to beat.
    second = parse_config({**config_dict, "sweep": {"targets": [0.3], "max_accuracy_drop": 100.0, "min_sparsity": 0.0}})
    with flows_in_this_process(live):
        before = sweep_flow(first, return_state=True)
        assert before.is_completed(), before.message
        (first.output_root / "promoted").unlink()
        after = sweep_flow(second, return_state=True)
        assert after.is_completed(), after.message
        with get_client(sync_client=True) as client:
            flow_run = client.read_flow_run(after.state_details.flow_run_id)
    _, smaller = before.result().chosen
    result, bigger = after.result().chosen
    message = receiver.wait_for(f"sweep {flow_run.name} regressed")
    assert message["subject"] == f"pruneflow: sweep {flow_run.name} regressed"
    assert f"size {bigger.zip_bytes:,} B zipped, up from {smaller.zip_bytes:,} B" in message["body"]
    assert (
        f"Promoted: sparsity {result.target}, format {bigger.format}, accuracy {bigger.accuracy:.4f}, "
        f"{bigger.zip_bytes:,} B zipped, latency {bigger.latency_median_ms:.3f} ms." in message["body"]
    )
    assert f"History: {first.output_root / 'history'}" in message["body"]
