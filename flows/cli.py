"""The `pruneflow` command: run a config, or the embedded demo."""

from __future__ import annotations

import atexit
import contextlib
import importlib
import logging
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from pruneflow.flows.console import ConsoleSession, command_console
from pruneflow.flows.server import TemporaryServer
from pruneflow.flows.ui import PORT, running_ui, start_ui, stop_ui
from pruneflow.flows.user_errors import quiet_user_errors
from pruneflow.tasks.core.errors import PruneflowError
from pruneflow.tasks.core.imports import imports_without_gc

if TYPE_CHECKING:
    from pruneflow.tasks.specs.config import RunConfig


app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
Refresh = Annotated[bool, typer.Option("--refresh", help="Run every stage, ignoring cached results.")]
Verbose = Annotated[bool, typer.Option(
    "--verbose", "-v", help="Write every log line, table and library message to the console as it comes, "
    "instead of one line per event (the rest in the run's debug.log).",
)]


STARTED = time.perf_counter()  # as the command's own module is imported: the start, but for Python's own


class Startup:
    """What a command does before its flow runs, timed: its imports, and the wait for its
    temporary Prefect server, which boots in a process of its own from the command's start
    (pruneflow.flows.server; none when PREFECT_API_URL names a server, or `pruneflow ui` runs one)."""

    PARTS = ("imports", "tensorflow import", "server start (waited)")

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.server: TemporaryServer | None = None
        self.ui: str | None = None  # the API of the server `pruneflow ui` keeps, when it runs

    @contextlib.contextmanager
    def part(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = round(time.perf_counter() - started, 3)

    def ready(self) -> str | None:
        """The API the flow is to use: ours once it answers (the wait is timed), or None when
        Prefect's settings name a server (then ours is stopped)."""
        from prefect.settings import PREFECT_API_URL

        if self.server is not None and PREFECT_API_URL.value():  # the Prefect profile, or a test's server
            self.server.stop()
            self.server = None
        if self.ui is not None:
            return self.ui
        if self.server is None:
            return None
        with self.part("server start (waited)"):
            self.server.wait()
        return self.server.api_url

    @contextlib.contextmanager
    def flow(self, refresh: bool) -> Iterator[None]:
        """Once the server answers (ready), the settings the command's flow runs under, timed
        as the part "flow"; the parts so far go to the run's summary (record_startup)."""
        from pruneflow.flows.running import record_startup, unshared_server

        api_url = self.ready()
        if api_url is not None:
            unshared_server()
        record_startup(self.seconds)
        with run_settings(refresh, api_url), self.part("flow"):
            yield

    def import_tensorflow_unless_checked(self, config) -> None:
        """Import TensorFlow now, while the server boots, when check_inputs will need it: the
        inputs were not checked before (checked_before)."""
        from pruneflow.flows.stages import STAGES
        from pruneflow.tasks.preflight.check_inputs import checked_before

        if not checked_before(config, STAGES):
            with self.part("tensorflow import"):
                importlib.import_module("pruneflow.tasks.core.runtime")


@contextlib.contextmanager
def startup(server: bool = True) -> Iterator[Startup]:
    """A Startup whose temporary server is already booting, stopped by its PID at the end: enter
    it first thing in a command.

    Args:
        server: False for a command that must not have a temporary server.
    """
    begun = Startup()
    if server and not os.environ.get("PREFECT_API_URL"):
        begun.ui = running_ui()
        if begun.ui is None:
            begun.server = TemporaryServer()
    try:
        yield begun
    finally:
        # What the flow left to send (logs, events), sent before the server stops, or before
        # Prefect's exit handler would; without the workers' "Still processing items: N items
        # remaining..." (a warning on the console for what is only the wait).
        if "prefect" in sys.modules:
            from prefect.events.worker import EventsWorker
            from prefect.logging.handlers import APILogWorker

            waits = [logging.getLogger(worker.__name__) for worker in (EventsWorker, APILogWorker)]
            levels = [wait.level for wait in waits]
            for wait in waits:
                wait.setLevel(logging.ERROR)
            try:
                EventsWorker.drain_all()
                APILogWorker.drain_all()
            finally:
                for wait, level in zip(waits, levels):
                    wait.setLevel(level)
        if begun.server is not None:
            begun.server.stop()


@contextlib.contextmanager
def run_settings(refresh: bool = False, api_url: str | None = None) -> Iterator[None]:
    """Prefect settings for flow runs started from this process.

    Args:
        refresh: build every stage again, replacing its stored artifact.
        api_url: the command's temporary server (Startup.ready); default: Prefect's settings,
            or a temporary server Prefect starts itself.
    """
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_FLOWS_HEARTBEAT_FREQUENCY,
        PREFECT_TASKS_REFRESH_CACHE,
        temporary_settings,
    )

    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    updates = {PREFECT_TASKS_REFRESH_CACHE: refresh}
    if api_url is not None:
        updates[PREFECT_API_URL] = api_url
    if api_url is not None or PREFECT_API_URL.value() is None:
        # The temporary server dies with this process, so flow-run heartbeats (which let a
        # long-lived server spot crashed runs) serve no one; stopping their thread costs
        # about a second per flow run.
        updates[PREFECT_FLOWS_HEARTBEAT_FREQUENCY] = None
    quiet_user_errors(console=True)
    with temporary_settings(updates=updates):
        yield


@contextlib.contextmanager
def flow_command(
    config_path: Path, refresh: bool, modules: tuple[str, ...], server: bool = True, verbose: bool = False
) -> Iterator[tuple[RunConfig, Startup, ConsoleSession]]:
    """Around a command's flow: its temporary server booting from the start (startup), the
    config and the flow's `modules` imported meanwhile with the garbage collector off, and
    TensorFlow too when the inputs are to be checked; then, once the server answers, the
    settings the flow runs under, and its console (pruneflow.flows.console). Yields the config,
    the Startup (its parts timed) and the console session."""
    with startup(server) as begun:
        with imports_without_gc():
            with begun.part("imports"):
                from pruneflow.tasks.specs.config import load_config

                config = load_config(config_path)  # a mistake in it stops the server at once, and the command
                for module in modules:
                    importlib.import_module(module)
            begun.import_tensorflow_unless_checked(config)
        links = begun.ui is not None  # its pages stay after the command: worth a link
        with begun.flow(refresh), command_console(config.output_root / "logs", verbose, links) as session:
            yield config, begun, session


def _run_flow(config_path: Path, refresh: bool = False, verbose: bool = False) -> None:
    with flow_command(config_path, refresh, ("pruneflow.flows.prune",), verbose=verbose) as (config, begun, session):
        from pruneflow.flows.prune import prune_flow

        summary = prune_flow(config)
    log = session.keep_in(summary.run_dir)
    from pruneflow.tasks.report.summary import render_files, render_table, worst_quantized

    quantized = worst_quantized(summary)
    typer.echo(
        f"\n{render_table(summary)}\n\n{render_files(summary)}\n\n"
        + (f"{quantized}\n" if quantized else "")
        + f"Layers: {summary.sanity.layer_counts()}\n"
        f"Pruned model: {summary.pruned_model}\n"
        f"Exported files: {', '.join(str(exported.folder) for exported in summary.exports)}\n"
        f"Summary: {summary.run_dir / 'summary.json'}\n"
        + (f"Debug log: {log}\n" if log else "")
        + f"{time_line(summary.stage_seconds, begun.seconds['flow'])}"
    )


def time_line(parts: dict[str, float], flow: float) -> str:
    """Where the command's time went: its own parts, each stage, the report, and the rest of the
    flow run (Prefect's bookkeeping)."""
    inside = sum(seconds for name, seconds in parts.items() if name not in Startup.PARTS)
    listed = ", ".join(f"{name} {seconds:.1f}" for name, seconds in parts.items())
    rest, total = max(flow - inside, 0.0), time.perf_counter() - STARTED
    return f"Seconds: {listed}, the rest of the flow run {rest:.1f}; in all {total:.1f}"


@app.command()
def run(
    config: Annotated[Path, typer.Argument(help="A YAML run config (see README).")],
    refresh: Refresh = False,
    verbose: Verbose = False,
) -> None:
    """Run the pruning flow on CONFIG; stages whose inputs did not change are reused."""
    _run_flow(config, refresh, verbose)


def _run_sweep(
    config_path: Path, refresh: bool = False, dask: str | None = None, dask_workers: int = 2, verbose: bool = False
) -> None:
    # No temporary server for Dask: its workers, other processes, need one that outlives the command.
    flow_parts = flow_command(config_path, refresh, ("pruneflow.flows.sweep",), server=dask is None, verbose=verbose)
    with flow_parts as (config, _, session):
        from pruneflow.flows.sweep import dask_runner, sweep_flow

        flow = sweep_flow.with_options(task_runner=dask_runner(dask, dask_workers)) if dask else sweep_flow
        outcome = flow(config)
    from pruneflow.tasks.report.summary import render_sweep

    report = render_sweep(outcome.results, outcome.chosen, config, outcome.decision, outcome.trials)
    files = ", ".join(path.name for path in sorted(outcome.run_dir.glob("sweep.*")))
    log = session.keep_in(outcome.run_dir)
    typer.echo(f"\n{report}\n\nRun folder: {outcome.run_dir} ({files}" + (", debug.log)" if log else ")"))


@app.command()
def sweep(
    config: Annotated[Path, typer.Argument(help="A YAML run config; its `sweep` section lists the targets.")],
    refresh: Refresh = False,
    dask: Annotated[
        str | None, typer.Option(help="Run the targets on Dask: a scheduler address, or 'local' for a local cluster.")
    ] = None,
    dask_workers: Annotated[int, typer.Option(help="Worker processes of a local Dask cluster.")] = 2,
    verbose: Verbose = False,
) -> None:
    """Prune CONFIG's baseline to each sweep target; promote the smallest model within the gate."""
    _run_sweep(config, refresh, dask, dask_workers, verbose)


@app.command()
def sensitivity(
    config: Annotated[Path, typer.Argument(help="A YAML run config; its `sensitivity` section lists the sparsities.")],
    target: Annotated[
        float | None, typer.Option(min=0.0, max=0.99, help="Overall sparsity to propose for; default: the schedule's.")
    ] = None,
    refresh: Refresh = False,
    verbose: Verbose = False,
) -> None:
    """Prune each selected layer of CONFIG's baseline alone; propose per-layer sparsities for a run."""
    with flow_command(config, refresh, ("pruneflow.flows.sensitivity",), verbose=verbose) as (loaded, _, session):
        from pruneflow.flows.sensitivity import sensitivity_flow

        report = sensitivity_flow(loaded, target)
    log = session.keep_in(report.table.parent)
    typer.echo(f"\n{report.render()}" + (f"\nDebug log: {log}" if log else ""))


@app.command()
def history(
    config: Annotated[Path, typer.Argument(help="The run config whose output_root holds the history.")],
    last: Annotated[int, typer.Option(help="How many recent runs to show.")] = 10,
    # pruneflow.tasks.decide.history's REGRESSION_TOLERANCE and LATENCY_TOLERANCE (not imported: it loads Prefect).
    tolerance: Annotated[float, typer.Option(help="Accuracy drop, in points, that counts as a regression.")] = 0.5,
    latency_tolerance: Annotated[
        float, typer.Option(help="Slow-down of the promoted file that counts as a regression (0.25: 25 % slower).")
    ] = 0.25,
) -> None:
    """Show recent sweeps' promoted files; exit 1 if the latest run regressed."""
    import pandas as pd

    from pruneflow.tasks.core.layout import OutputLayout
    from pruneflow.tasks.decide.history import read_history, regressions, runs_summary
    from pruneflow.tasks.specs.config import load_config

    folder = OutputLayout(root=load_config(config).output_root).history
    rows = read_history(folder)
    if rows.empty:
        raise PruneflowError(f"{folder}: no sweep history yet; run `pruneflow sweep {config}` first")
    runs = runs_summary(rows)
    flagged = regressions(runs, tolerance, latency_tolerance)
    shown = runs.tail(last)
    decisions = [decided(run) for run in shown.itertuples()]
    width = max(len("decision"), *map(len, decisions))
    typer.echo(
        f"{'started (UTC)':<20} {'flow run':<36} {'promoted':>8} {'format':<15} {'accuracy':>8} {'zip bytes':>11} "
        f"{'latency ms':>10}  {'decision':<{width}}  regression"
    )
    for run, decision in zip(shown.itertuples(), decisions):
        nothing = pd.isna(run.target)  # nothing promoted by this run
        point = "" if nothing else f"{run.target:.2f}" + (f"+c{run.channel_fraction:g}" if run.channel_fraction else "")
        promoted, fmt, accuracy, size, latency = ("none", "-", "-", "-", "-") if nothing else (
            point, run.format, f"{run.accuracy:.4f}", f"{int(run.zip_bytes):,}",
            "-" if pd.isna(run.latency_ms) else f"{run.latency_ms:.3f}",
        )
        typer.echo(
            f"{run.started:%Y-%m-%d %H:%M:%S}  {run.flow_run_id:<36} {promoted:>8} {fmt:<15} {accuracy:>8} {size:>11} "
            f"{latency:>10}  {decision:<{width}}  {flagged.get(run.flow_run_id, '')}".rstrip()
        )
    if runs.iloc[-1]["flow_run_id"] in flagged:
        raise typer.Exit(1)


def decided(run) -> str:
    """A history run's decision as `history` shows it: the verdict and why (targets failed, say)."""
    return ": ".join(part for part in (run.decision, run.decision_why) if part) or "-"


@app.command()
def demo(
    workdir: Annotated[Path, typer.Option(help="Where the demo's data, baseline and outputs go.")] = Path("demo"),
    sweep: Annotated[bool, typer.Option("--sweep", help="Sweep the demo's targets instead of one run.")] = False,
    verbose: Verbose = False,
) -> None:
    """Write the MNIST demo dataset, train a baseline if none exists, run the flow (or the sweep)."""
    from pruneflow.tasks.demo import prepare_demo

    config = prepare_demo(workdir, say=typer.echo)
    if sweep:
        _run_sweep(config, verbose=verbose)
    else:
        _run_flow(config, verbose=verbose)


@app.command()
def ui(
    port: Annotated[int, typer.Option(help="The port of 127.0.0.1 to serve it on.")] = PORT,
    stop: Annotated[bool, typer.Option("--stop", help="Stop the UI server this command started.")] = False,
) -> None:
    """Keep a Prefect server with its UI running after the commands: they run their flows there
    while it runs (on SQLite in your Prefect home), and their pages stay reachable."""
    if stop:
        pid = stop_ui()
        typer.echo(f"Stopped the Prefect UI server (PID {pid})." if pid else "No Prefect UI server of pruneflow was running.")
        return
    url, started = start_ui(port)
    typer.echo(
        f"Prefect UI {'started' if started else 'already running'}: {url}\n"
        "pruneflow commands run their flows there while it runs; `pruneflow ui --stop` stops it."
    )


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


_exit_code: int | None = None  # the console command's, once main() returned


def _end_process() -> None:
    """The process's last exit handler: end it without Python's own teardown.

    Once a command that loaded TensorFlow is done, Python's teardown of its modules takes 1-2 s
    on 2 cores (measured: as long as a cached run's whole flow). By then everything the command
    wrote is closed, its temporary server stopped, its threads joined and every other exit
    handler run (Prefect's, TensorFlow's): nothing is left to lose. After an unexpected error
    (no exit code recorded), Python tears down as usual.
    """
    if _exit_code is None:
        return
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(_exit_code)


def console() -> None:
    """The `pruneflow` console script: main() in a process that ends as soon as it is done."""
    global _exit_code
    atexit.register(_end_process)  # before main() imports Prefect and TensorFlow: runs after their handlers
    _exit_code = main()
    sys.exit(_exit_code)


if __name__ == "__main__":
    console()
