"""How a user error shows in Prefect's logs: once, its message (which names the file, line or
field), without the traceback that would bury it; in the CLI's process and in a worker's alike.

Prefect reports a failed task four times: the task's exception, the task's final state, the
same exception again as the flow's, the flow's final state. The run's log (the UI's) keeps the
first; a command's console keeps none, since the command itself ends with `pruneflow: error: ...`.
"""

from __future__ import annotations

import logging
import weakref

from pruneflow.tasks.core.errors import PruneflowError

# Loggers under which Prefect reports a failed task or flow run, with the exception's traceback.
RUN_LOGGERS = ("prefect.task_runs", "prefect.flow_runs")
# Loggers whose handlers write Prefect's logs to the console.
CONSOLE_LOGGERS = ("", "prefect", *RUN_LOGGERS)


def user_error(record: logging.LogRecord) -> PruneflowError | None:
    """The user error the record reports (kept on it once its traceback is dropped), or None."""
    if record.exc_info and isinstance(record.exc_info[1], PruneflowError):
        return record.exc_info[1]
    return getattr(record, "pruneflow_user_error", None)


def failed_on_a_user_error(record: logging.LogRecord) -> bool:
    """Prefect's "Finished in state Failed(...)" of a task or flow run that a user error failed."""
    message = record.getMessage()
    return message.startswith("Finished in state Failed(") and f"{PruneflowError.__name__}: " in message


# The user errors logged in this process, by whichever run logger: the task's and the flow's
# report of one exception are logged on two loggers.
_LOGGED: weakref.WeakSet[BaseException] = weakref.WeakSet()


class UserErrorsOnce(logging.Filter):
    """A user error logged once, without its traceback: its repeats (the flow's report of a task's
    exception, the final states that quote it) dropped."""

    def filter(self, record: logging.LogRecord) -> bool:
        if failed_on_a_user_error(record):
            return False
        error = user_error(record)
        if error is None:
            return True
        if error in _LOGGED:
            return False
        _LOGGED.add(error)
        record.exc_info = record.exc_text = None
        record.pruneflow_user_error = error
        return True


class NoUserErrors(logging.Filter):
    """For a command's console: no user error at all (the command prints it, once, as it exits)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return user_error(record) is None and not failed_on_a_user_error(record)


def quiet_user_errors(console: bool = False) -> None:
    """Install the filters in this process, once: on Prefect's run loggers (called as a flow run
    starts, so that a worker's flow-run logs, the UI's, show a user error once as the CLI does),
    and with `console` (a command's process) on the handlers that write Prefect's logs to it."""
    from prefect.logging.handlers import PrefectConsoleHandler

    for name in RUN_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, UserErrorsOnce) for f in logger.filters):
            logger.addFilter(UserErrorsOnce())
    if console:
        for name in CONSOLE_LOGGERS:
            for handler in logging.getLogger(name).handlers:
                if isinstance(handler, PrefectConsoleHandler) and not any(
                    isinstance(f, NoUserErrors) for f in handler.filters
                ):
                    handler.addFilter(NoUserErrors())
