"""What a `pruneflow` command shows while its flow runs: one line per event (a stage built, an
epoch trained, a layer measured; in a log, only the stages that took a second or more) and, in
a terminal, a live line with the stage running and one per training with its target, epoch,
batch and the time left.

Everything else the flow's process writes to stderr (Prefect's run logs, the per-tensor tables,
TensorFlow's converter chatter, library warnings) goes to a debug log instead, which the command
names at its end; `--verbose` writes it all to the console as it comes, as before. Warnings and
errors of the runs are shown too (a user error is the command's own last line).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

from pruneflow.flows.user_errors import RUN_LOGGERS, NoUserErrors
from pruneflow.tasks.core.errors import PruneflowError
from pruneflow.tasks.unkeyed import progress


# Seconds under which a built stage gets no line in a log (it does in a terminal, as do reused ones).
QUICK = 1.0


class ConsoleProgress:
    """The listener of pruneflow.tasks.unkeyed.progress's reports, for one command."""

    def __init__(self, terminal: TextIO, live: bool) -> None:
        self.terminal, self.lock = terminal, threading.Lock()
        self.labels: dict[str, str] = {}  # a sweep point's label -> "target 0.5 (1 of 2)"
        self.bars: dict[tuple, object] = {}  # (point, title) -> its Rich task
        self.live = None
        if live:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

            self.live = Progress(
                TextColumn("{task.description}"), BarColumn(bar_width=24), MofNCompleteColumn(),
                TextColumn("{task.fields[left]}"), console=Console(file=terminal), transient=True,
            )
            self.live.start()
            self.stage = self.live.add_task("starting", total=None, left="")

    def where(self, point: str | None) -> str:
        return f"{self.labels.get(point, f'target {point}')}: " if point else ""

    def line(self, text: str) -> None:
        if self.live is not None:
            self.live.console.print(text, highlight=False, markup=False)
        else:
            print(text, file=self.terminal, flush=True)

    def __call__(self, kind: str, fields: dict) -> None:
        with self.lock:
            getattr(self, f"on_{kind}")(self.where(fields.pop("point")), **fields)

    def on_points(self, where: str, labels: list[str]) -> None:
        self.labels = {label: f"target {label} ({i} of {len(labels)})" for i, label in enumerate(labels, 1)}
        self.line(f"Sweep: {len(labels)} targets ({', '.join(labels)})")

    def on_stage(self, where: str, name: str, state: str, seconds: float = 0.0) -> None:
        if state == "running":
            if self.live is not None:
                self.live.update(self.stage, description=f"running {where}{name}")
            return
        if self.live is None and (state == "reused" or seconds < QUICK):
            return  # in a log, a line for the work that took time
        self.line(f"{where}{name}: " + ("reused" if state == "reused" else f"built in {seconds:.1f} s"))

    def on_batch(self, where: str, title: str, epoch: int, epochs: int, batch: int, batches: int | None, seconds: float) -> None:
        if self.live is None or not batches:
            return
        per_batch = seconds / batch
        left = (batches - batch) * per_batch + (epochs - epoch) * batches * per_batch
        key = (where, title)
        description = f"{where}{title}, epoch {epoch} of {epochs}"
        if key not in self.bars:
            self.bars[key] = self.live.add_task(description, total=batches, left="")
        self.live.update(self.bars[key], description=description, completed=batch, total=batches, left=f"~{left:.0f} s left")

    def on_epoch(self, where: str, title: str, epoch: int, epochs: int, seconds: float, val_accuracy: float | None) -> None:
        accuracy = f", val accuracy {val_accuracy:.4f}" if val_accuracy is not None else ""
        left = f", ~{seconds * (epochs - epoch):.0f} s left" if epoch < epochs else ""
        self.line(f"{where}{title}: epoch {epoch} of {epochs} in {seconds:.1f} s{accuracy}{left}")
        if epoch == epochs and self.live is not None and (where, title) in self.bars:
            self.live.remove_task(self.bars.pop((where, title)))

    def on_layer(self, where: str, name: str, done: int, total: int) -> None:
        self.line(f"sensitivity: layer {done} of {total} measured ({name})")

    def close(self) -> None:
        if self.live is not None:
            self.live.stop()


class ShownRecord(logging.Formatter):
    """A run's warning or error as `WARNING: message`; its link as the message alone."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        return message if record.levelno < logging.WARNING else f"{record.levelname}: {message}"


class ConsoleSession:
    """A command's console while its flow runs (command_console): where the rest went."""

    def __init__(self, log: Path | None) -> None:
        self.log = log

    def keep_in(self, run_dir: Path) -> Path | None:
        """Move the debug log into the run's folder (as debug.log); its path."""
        if self.log is None or not self.log.exists():
            return None
        kept = run_dir / "debug.log"
        try:
            shutil.move(self.log, kept)
        except OSError:  # left where it is
            return self.log
        self.log = kept
        return kept


@contextlib.contextmanager
def command_console(logs: Path, verbose: bool, links: bool = False) -> Iterator[ConsoleSession]:
    """Around a command's flow: its progress on the console, the rest of stderr into a debug log
    under `logs` (the file descriptor itself, so that native code's output goes there too);
    with `verbose`, nothing changes: everything is written to the console as it comes. With
    `links` (a server that outlives the command), the runs' `View at` lines are shown too."""
    if verbose:
        yield ConsoleSession(None)
        return
    name = f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{os.getpid()}.log"
    try:
        logs.mkdir(parents=True, exist_ok=True)
        (logs / name).touch()
        log = logs / name
    except OSError:  # an output folder it cannot write (the flow's first check says so): the system's
        log = Path(tempfile.gettempdir()) / f"pruneflow-{name}"
    sys.stderr.flush()
    saved = os.dup(2)
    terminal = os.fdopen(os.dup(2), "w", buffering=1, errors="replace")
    shown = ConsoleProgress(terminal, live=terminal.isatty())
    warnings = logging.StreamHandler(terminal)  # the runs' warnings and errors
    warnings.addFilter(lambda record: record.levelno >= logging.WARNING or (links and record.getMessage().startswith("View at ")))
    warnings.setFormatter(ShownRecord())
    warnings.addFilter(NoUserErrors())
    with open(log, "ab") as file:
        os.dup2(file.fileno(), 2)
        progress.listen(shown)
        for logger in RUN_LOGGERS:
            logging.getLogger(logger).addHandler(warnings)
        try:
            yield ConsoleSession(log)
        except PruneflowError:
            raise  # the command says it, in one line
        except BaseException:
            print(f"Debug log: {log}", file=terminal, flush=True)  # what led to it
            raise
        finally:
            for logger in RUN_LOGGERS:
                logging.getLogger(logger).removeHandler(warnings)
            progress.listen(None)
            shown.close()
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            terminal.close()
