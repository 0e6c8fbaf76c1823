"""A Prefect server and worker on this machine, started as real processes and stopped by PID."""

from __future__ import annotations

import os
import pwd
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path


PREFECT = str(Path(sys.executable).with_name("prefect"))


def server_env(port: int, base: dict[str, str] | None = None, database_url: str | None = None) -> dict[str, str]:
    """Environment for a server on 127.0.0.1:port and for the clients and workers that use it.

    Args:
        database_url: the server's database, e.g. `postgresql+asyncpg://prefect@127.0.0.1:5432/prefect`
            (pruneflow.deployments.postgres); without it, the server's default, SQLite under PREFECT_HOME.
            Give it to the server's environment only: clients and workers need no database.
    """
    env = dict(os.environ if base is None else base)
    if database_url is not None:
        env["PREFECT_SERVER_DATABASE_CONNECTION_URL"] = database_url
    env.update(
        PREFECT_API_URL=f"http://127.0.0.1:{port}/api",
        PREFECT_SERVER_API_HOST="127.0.0.1",
        # Without it the UI calls port 4200 and shows a blank page.
        PREFECT_SERVER_API_PORT=str(port),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        DO_NOT_TRACK="1",
        # The leases on concurrency slots (the GPU slot) in files under PREFECT_HOME, not in the
        # server's memory: a server restarted mid-training would otherwise forget the training's
        # lease while its slot stays taken, and no training would start again.
        PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE="prefect.server.concurrency.lease_storage.filesystem",
    )
    return env


def as_user(user: str | None) -> dict:
    """subprocess keywords to run as the system user `user` (we must be root), with its group and
    none of ours; none for None."""
    if user is None:
        return {}
    return {"user": user, "group": pwd.getpwnam(user).pw_gid, "extra_groups": []}


# Runs a command with SIGINT back to its default action (the same PID: exec). A process started in
# the background of a script (`pruneflow serve &`) ignores SIGINT, and its children inherit that;
# a Prefect worker stops on the SIGINT it sends itself on SIGTERM, so, ignoring it, it never would.
# Our children run in sessions of their own, where no terminal's Ctrl-C reaches them anyway.
_DEFAULT_SIGINT = "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); os.execvp(sys.argv[1], sys.argv[1:])"


@dataclass
class Process:
    """A child process in its own session, so that stopping it stops its children too."""

    name: str
    args: list[str]
    env: dict[str, str]
    log: Path
    cwd: Path | None = None
    user: str | None = None  # a system user to run as (we must be root), with its group only
    popen: subprocess.Popen | None = field(default=None, repr=False)

    def start(self) -> Process:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        args = self.args
        if self.user is None and signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
            args = [sys.executable, "-I", "-S", "-c", _DEFAULT_SIGINT, *args]
        with open(self.log, "ab") as out:
            self.popen = subprocess.Popen(
                args, env=self.env, cwd=self.cwd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                **as_user(self.user),
            )
        return self

    @property
    def pid(self) -> int:
        return self.popen.pid

    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def kill(self) -> None:
        """SIGKILL to this process and every process below it at once, as when its machine dies:
        none of them can report anything (flow runs started in sessions of their own included)."""
        if not self.running():
            return
        for pid in [self.pid, *descendants(self.pid)]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.popen.wait()

    def stop(self, timeout: float = 20) -> bool:
        """SIGTERM to the process group by its PID, then SIGKILL if it has not ended in time; False
        where it had to be killed (said on stderr, with the log to read)."""
        if not self.running():
            return True
        os.killpg(self.pid, signal.SIGTERM)
        try:
            self.popen.wait(timeout=timeout)
            return True
        except subprocess.TimeoutExpired:
            os.killpg(self.pid, signal.SIGKILL)
            self.popen.wait(timeout=timeout)
            print(f"pruneflow: the {self.name} (PID {self.pid}) did not stop within {timeout:g} s of SIGTERM and was "
                  f"killed; see {self.log}", file=sys.stderr, flush=True)
            return False


def descendants(pid: int) -> list[int]:
    """The PIDs of the processes below `pid` (children, theirs, ...), read from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # ended meanwhile
        parent = int(stat.rsplit(")", 1)[1].split()[1])  # after the command name, which may hold spaces
        children.setdefault(parent, []).append(int(entry.name))
    found, below = [], [pid]
    while below:
        for child in children.get(below.pop(), []):
            found.append(child)
            below.append(child)
    return found


def wait_healthy(port: int, process: Process, timeout: float = 120) -> None:
    """Wait until the server answers /api/health, or fail with the end of its log."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not process.running():
            break
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    tail = process.log.read_text(errors="replace")[-3000:] if process.log.exists() else ""
    process.stop()
    raise RuntimeError(f"the Prefect server on port {port} did not become healthy:\n{tail}")


def start_server(port: int, env: dict[str, str], log: Path) -> Process:
    server = Process("server", [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)], env, log)
    server.start()
    wait_healthy(port, server)
    return server


def start_worker(pool: str, env: dict[str, str], log: Path, cwd: Path | None = None, limit: int | None = None) -> Process:
    """A process worker on `pool`; `limit`: at most that many flow runs at a time (default: no limit)."""
    args = [PREFECT, "worker", "start", "--pool", pool, "--type", "process"]
    return Process("worker", args + (["--limit", str(limit)] if limit else []), env, log, cwd).start()
