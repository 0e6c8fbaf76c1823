"""Running stages in a flow: the command's clock, and which training stages take a GPU slot."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any, TypeVar

from pruneflow.tasks.core.stage import Stage
from pruneflow.tasks.core.store import ArtifactStore, StoredArtifact
from pruneflow.tasks.unkeyed.progress import report

A = TypeVar("A", bound=StoredArtifact)

# Wall time of each stage called inside a stage_clock() block, by stage name.
_CLOCK: ContextVar[dict[str, float] | None] = ContextVar("pruneflow_stage_clock", default=None)


# What the command did before its flow (its imports, its wait for the server), for the next clock.
_STARTUP: dict[str, float] = {}


def record_startup(seconds: dict[str, float]) -> None:
    """Give the next stage_clock of this process the command's own parts (pruneflow.flows.cli.Startup),
    so that a run's summary shows all of its time."""
    _STARTUP.clear()
    _STARTUP.update(seconds)


@contextlib.contextmanager
def stage_clock() -> Iterator[dict[str, float]]:
    """Collect, by name, the wall time of every stage called (and every `timed` block) inside,
    after the command's own parts if it recorded them (record_startup)."""
    seconds: dict[str, float] = dict(_STARTUP)
    _STARTUP.clear()
    token = _CLOCK.set(seconds)
    try:
        yield seconds
    finally:
        _CLOCK.reset(token)


@contextlib.contextmanager
def timed(name: str) -> Iterator[None]:
    """Record the block's wall time under `name` in the enclosing stage_clock, if any."""
    started = time.perf_counter()
    try:
        yield
    finally:
        seconds = _CLOCK.get()
        if seconds is not None:
            seconds[name] = round(time.perf_counter() - started, 3)


_UNSHARED = False


def unshared_server() -> None:
    """Say that this process's flows run on a Prefect server of their own (a `pruneflow` command's
    temporary one): no other run can want the GPU there, so the training stages take no slot
    (and need not ask the server whether it has any)."""
    global _UNSHARED
    _UNSHARED = True


def limits_any(tags: tuple[str, ...]) -> bool:
    """Whether the current Prefect server has a concurrency limit on one of these task tags: the
    GPU slots that pruneflow.deployments.gpu sets on TRAINING_TAG. A read, which takes no lock."""
    from prefect import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        for tag in tags:
            try:
                client.read_concurrency_limit_by_tag(tag)
            except ObjectNotFound:
                continue
            return True
    return False


def run_stage(stage: Stage[A], store: ArtifactStore, /, **inputs: Any) -> A:
    """Run the stage's task (in a flow), timed in the enclosing stage_clock, and return its artifact.

    A training stage takes a GPU slot (it runs with its tag) only where there is one to take: on a
    shared server that has GPU slots, when it will train. It runs untagged on a server no other
    run shares, on a server without slots, and when what it would build is stored (it will not
    train; were the folder deleted in between, it would train without a slot). A tag without a
    limit buys nothing, yet Prefect still asks the server for a slot: a write, which a SQLite
    server refuses while it records events ("database is locked"), each refusal a 2 s retry.
    """
    from prefect.states import State

    report("stage", name=stage.name, state="running")
    started = time.perf_counter()
    with timed(stage.name):
        untagged = stage.tags and (_UNSHARED or stage.stored(store, **inputs) or not limits_any(stage.tags))
        task = stage.task.with_options(tags=[]) if untagged else stage.task
        result = task(store=store, **inputs)
    # A task called directly returns what its function returned: the Cached state, when reused.
    reused = isinstance(result, State)
    report("stage", name=stage.name, state="reused" if reused else "built", seconds=time.perf_counter() - started)
    return result.result() if reused else result
