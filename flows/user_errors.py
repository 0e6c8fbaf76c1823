"""How a user error shows in Prefect's logs: its message, which names the file, line or field,
without the traceback that would bury it; in the CLI's process and in a worker's alike."""

from __future__ import annotations

import logging

from pruneflow.tasks.core.errors import PruneflowError

# Loggers under which Prefect reports a failed task or flow run, with the exception's traceback.
RUN_LOGGERS = ("prefect.task_runs", "prefect.flow_runs")


class UserErrorsWithoutTraceback(logging.Filter):
    """Drop the traceback from Prefect's log of a run that failed on a user error."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], PruneflowError):
            record.exc_info = record.exc_text = None
        return True


def quiet_user_errors() -> None:
    """Install the filter on Prefect's run loggers of this process, once: called as a flow run
    starts, so that a worker's flow-run logs (the UI's) show a user error as the CLI does."""
    for name in RUN_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, UserErrorsWithoutTraceback) for f in logger.filters):
            logger.addFilter(UserErrorsWithoutTraceback())
