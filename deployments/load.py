"""Many flow runs at once through the API, as many presses of Run, and what became of them.

Used by bench/bench_server_load.py and its test: `create_at_once` asks the server for flow runs
of a deployment from as many threads at the same moment, each with its own client, and keeps
every error the server answered; `wait_for` follows the runs created until each is
final or the time is up; `overlaps` says whether task runs (the trainings) ever ran at once.
"""

from __future__ import annotations

import contextvars
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from uuid import UUID


@dataclass
class Submitted:
    """The flow runs the server created, and the errors it answered instead."""

    ids: list[UUID] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def create_at_once(deployment: str, parameters: list[dict]) -> Submitted:
    """One create_flow_run call for `deployment` (FLOW/NAME) per item of `parameters`, all
    released at once, each tried once as the UI's Run button does (Prefect's client would retry
    a 503 out of sight)."""
    from prefect import get_client
    from prefect.settings import PREFECT_CLIENT_MAX_RETRIES, temporary_settings

    with get_client(sync_client=True) as client:
        deployment_id = client.read_deployment_by_name(deployment).id
    start, submitted, lock = threading.Barrier(len(parameters)), Submitted(), threading.Lock()

    def press_run(parameters: dict) -> None:
        with get_client(sync_client=True) as client:
            start.wait()
            try:
                flow_run = client.create_flow_run_from_deployment(deployment_id, parameters=parameters)
            except Exception as error:  # noqa: BLE001: every answer but a flow run is what is counted
                with lock:
                    submitted.errors.append(f"{type(error).__name__}: {str(error).splitlines()[0][:200]}")
                return
        with lock:
            submitted.ids.append(flow_run.id)

    # Each thread in a copy of this context: the caller's settings (the API URL) hold there too.
    with temporary_settings(updates={PREFECT_CLIENT_MAX_RETRIES: 0}), ThreadPoolExecutor(len(parameters)) as pool:
        for done in [pool.submit(contextvars.copy_context().run, press_run, item) for item in parameters]:
            done.result()
    return submitted


@dataclass
class Outcome:
    """What became of the flow runs: their final states, those never final in time, and when
    the last one ended."""

    states: Counter
    stuck: list[UUID]
    missing: list[UUID]
    last_end: datetime | None

    @property
    def completed(self) -> int:
        return self.states.get("COMPLETED", 0)


def wait_for(ids: list[UUID], timeout: float, poll: float = 2.0) -> Outcome:
    """Follow the flow runs until every one is final or `timeout` s have passed."""
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    deadline, wanted = time.monotonic() + timeout, set(ids)
    with get_client(sync_client=True) as client:
        while True:
            runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=list(wanted))),
                                         limit=len(wanted) or 1)
            final = [run for run in runs if run.state is not None and run.state.is_final()]
            if len(final) == len(wanted) or time.monotonic() > deadline:
                break
            time.sleep(poll)
    found = {run.id for run in runs}
    ends = [run.end_time for run in final if run.end_time is not None]
    return Outcome(
        states=Counter(run.state.type.value for run in final),
        stuck=[run.id for run in runs if run not in final],
        missing=sorted(wanted - found, key=str),
        last_end=max(ends, default=None),
    )


def task_intervals(
    flow_run_ids: list[UUID], task_name: str, state: str | None = None
) -> list[tuple[datetime, datetime]]:
    """(start, end) of every run of the task `task_name` in these flow runs that ran, by start; with
    `state`, only those that ended in it ("Completed": a stage that ran, not one served Cached).
    (The server records task runs from events: read once the flow runs are final, and a moment after.)"""
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=list(flow_run_ids))))
    return sorted(
        (run.start_time, run.end_time) for run in runs
        if run.name.rsplit("-", 1)[0] == task_name and run.start_time and run.end_time
        and (state is None or (run.state is not None and run.state.name == state))
    )


def most_at_once(intervals: list[tuple[datetime, datetime]]) -> int:
    """The largest number of intervals running at the same moment (an end before a start at a tie)."""
    events = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    running = peak = 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    return peak
