"""The logger stage code writes to: the Prefect run's (shown in the UI) inside a run, a plain one outside."""

from __future__ import annotations

import logging


def run_logger() -> logging.Logger | logging.LoggerAdapter:
    """The current task or flow run's logger, or the `pruneflow` logger outside a run (unit tests)."""
    from prefect import get_run_logger
    from prefect.exceptions import MissingContextError

    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger("pruneflow")
