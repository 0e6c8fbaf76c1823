"""What a Prefect server recorded of a flow run: its task runs' states and its artifacts."""

from __future__ import annotations

import time


def task_runs(flow_run_id, settle: float = 1.0, timeout: float = 30.0) -> list[tuple[str, str, int]]:
    """(task name, state name, run count) of a flow run's task runs, in start order.

    The server records task runs from events, after the flow run's own final state: the last
    task runs of a flow that just finished may not be there yet. Read until there is one, every
    one is final, and nothing has changed for `settle` seconds (every flow run asked about runs
    a task: an empty answer is one the server has not recorded yet).

    Raises:
        TimeoutError: no such moment within `timeout` seconds (what was read last in the message).
    """
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    def read() -> list[tuple[str, str, int]]:
        with get_client(sync_client=True) as client:
            runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
        runs.sort(key=lambda run: run.start_time or run.expected_start_time)
        # A task run can be on record a moment before its first state.
        final = [run.state is not None and run.state.is_final() for run in runs]
        return [(run.name.rsplit("-", 1)[0], run.state.name if done else "", run.run_count) for run, done in zip(runs, final)]

    deadline, seen, since = time.monotonic() + timeout, None, time.monotonic()
    while True:
        found = read()
        if found != seen:
            seen, since = found, time.monotonic()
        elif found and all(state for _, state, _ in found) and time.monotonic() - since >= settle:
            return found
        if time.monotonic() > deadline:
            raise TimeoutError(f"the task runs of flow run {flow_run_id} did not settle within {timeout:g} s: {found}")
        time.sleep(0.25)


def stage_states(flow_run_id) -> dict[str, str]:
    """Task name -> state name (Completed, Cached, Failed) of the last run of each task."""
    return {name: state for name, state, _ in task_runs(flow_run_id)}


def artifacts_of(flow_run_id) -> dict:
    """Key -> the Prefect artifact a flow run published under it."""
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
    return {artifact.key: artifact for artifact in found}


def latest_flow_run_id():
    from prefect import get_client
    from prefect.client.schemas.sorting import FlowRunSort

    with get_client(sync_client=True) as client:
        [latest] = client.read_flow_runs(sort=FlowRunSort.START_TIME_DESC, limit=1)
    return latest.id


def run_logs(flow_run_id, containing: str, timeout: float = 30.0) -> list:
    """The log records of a flow run (its tasks' included) whose message contains `containing`,
    once at least one is on the server (a process sends its logs in batches, as it ends too)."""
    from prefect import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    from tests.helpers.polling import wait_until

    def read() -> list | None:
        with get_client(sync_client=True) as client:
            logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
        return [log for log in logs if containing in log.message] or None

    return wait_until(read, timeout, f"a log of flow run {flow_run_id} containing {containing!r}")
