"""The `pruneflow` command: run a config, or the embedded demo."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer

from tasks.errors import PruneflowError

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)


# Loggers under which Prefect reports a failed task or flow run, with the exception's traceback.
RUN_LOGGERS = ("prefect.task_runs", "prefect.flow_runs")


class UserErrorsWithoutTraceback(logging.Filter):
    """Drop the traceback from Prefect's log of a run that failed on a user error: the message
    names the file, line or field, and a traceback would only bury it."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], PruneflowError):
            record.exc_info = record.exc_text = None
        return True


@contextlib.contextmanager
def run_settings(refresh: bool = False) -> Iterator[None]:
    """Prefect settings for flow runs started from this process.

    Args:
        refresh: run every stage, overwriting its cache record and stored artifact.
    """
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_FLOWS_HEARTBEAT_FREQUENCY,
        PREFECT_TASKS_REFRESH_CACHE,
        temporary_settings,
    )

    # Ephemeral mode: the temporary server takes 12-18 s to start on 2 cores (Prefect waits 20 s).
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    updates = {PREFECT_TASKS_REFRESH_CACHE: refresh}
    if PREFECT_API_URL.value() is None:
        # The temporary server dies with this process, so flow-run heartbeats (which let a
        # long-lived server spot crashed runs) serve no one; stopping their thread costs
        # about a second per flow run.
        updates[PREFECT_FLOWS_HEARTBEAT_FREQUENCY] = None
    quiet = UserErrorsWithoutTraceback()
    for name in RUN_LOGGERS:
        logging.getLogger(name).addFilter(quiet)
    try:
        with temporary_settings(updates=updates):
            yield
    finally:
        for name in RUN_LOGGERS:
            logging.getLogger(name).removeFilter(quiet)


def _run_flow(config_path: Path, refresh: bool = False) -> None:
    from flows.prune import prune_flow
    from tasks.config import load_config
    from tasks.report import render_table

    config = load_config(config_path)
    with run_settings(refresh):
        summary = prune_flow(config)
    typer.echo(f"\n{render_table(summary)}\n\nPruned model: {summary.pruned_model}\nSummary: {summary.run_dir / 'summary.json'}")


@app.command()
def run(
    config: Annotated[Path, typer.Argument(help="A YAML run config (see README).")],
    refresh: Annotated[bool, typer.Option("--refresh", help="Run every stage, ignoring cached results.")] = False,
) -> None:
    """Run the pruning flow on CONFIG; stages whose inputs did not change are reused."""
    _run_flow(config, refresh)


@app.command()
def demo(
    workdir: Annotated[Path, typer.Option(help="Where the demo's data, baseline and outputs go.")] = Path("demo"),
) -> None:
    """Write the MNIST demo dataset, train a baseline if none exists, run the flow."""
    from tasks.demo import prepare_demo

    _run_flow(prepare_demo(workdir, say=typer.echo))


def main(argv: list[str] | None = None) -> int:
    """Console entry point: user errors print their message and exit 2, without a traceback."""
    try:
        # Standalone mode: bad arguments print click's usage message and exit 2.
        app(args=argv, prog_name="pruneflow")
    except PruneflowError as error:
        typer.echo(f"pruneflow: error: {error}", err=True)
        return 2
    except SystemExit as done:
        return done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
