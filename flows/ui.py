"""`pruneflow ui`: a Prefect server with its UI that outlives the commands, for a person iterating.

A command's temporary server (pruneflow.flows.server) is gone when the command ends, and with it
the pages its `View at` link points to. `pruneflow ui` starts Prefect's own server (`prefect
server start`, its UI on, its SQLite database in the user's Prefect home) in a session of its
own, and records its PID and port in PREFECT_HOME/pruneflow-ui.json; while it answers, every
command without PREFECT_API_URL runs its flows there instead of starting a temporary server, so
its runs stay on view after it ends. `pruneflow ui --stop` stops it by that PID.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from pruneflow.flows.server import STARTUP_TIMEOUT, require_free_port
from pruneflow.tasks.core.errors import PruneflowError

STATE = "pruneflow-ui.json"
LOG = "pruneflow-ui.log"
PORT = 4200  # Prefect's own default


def prefect_home() -> Path:
    """PREFECT_HOME as Prefect reads it from the environment (its profile can set it too: set the
    variable to use another one), without importing Prefect."""
    return Path(os.environ.get("PREFECT_HOME") or Path.home() / ".prefect").expanduser()


def answers(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def recorded() -> dict | None:
    """The UI server's record ({"pid", "port"}), or None if there is none or it is unreadable."""
    try:
        state = json.loads((prefect_home() / STATE).read_text())
        return {"pid": int(state["pid"]), "port": int(state["port"])}
    except (OSError, ValueError, KeyError, TypeError):
        return None


def running_ui() -> str | None:
    """The API URL of the UI server if it runs and answers; None otherwise (a stale record is removed)."""
    state = recorded()
    if state is None:
        return None
    if alive(state["pid"]) and answers(state["port"]):
        return f"http://127.0.0.1:{state['port']}/api"
    if not alive(state["pid"]):
        (prefect_home() / STATE).unlink(missing_ok=True)
    return None


def start_ui(port: int = PORT) -> tuple[str, bool]:
    """The UI's address, and whether it was started now (False: one was running already)."""
    api = running_ui()
    if api is not None:
        return api.removesuffix("/api"), False
    require_free_port(port)
    home = prefect_home()
    home.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)
    with open(home / LOG, "ab") as log:
        process = subprocess.Popen(
            [str(Path(sys.executable).with_name("prefect")), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
    state, written = home / STATE, home / f".{STATE}.tmp"
    written.write_text(json.dumps({"pid": process.pid, "port": port}))
    written.replace(state)
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while not answers(port):
        if process.poll() is not None or time.monotonic() > deadline:
            stop_ui()
            raise PruneflowError(
                f"the Prefect UI server did not start on 127.0.0.1:{port}; what it said is in {home / LOG}"
            )
        time.sleep(0.25)
    return f"http://127.0.0.1:{port}", True


def stop_ui() -> int | None:
    """Stop the UI server by its PID (its whole session: SIGTERM, then SIGKILL after 10 s); the
    PID stopped, or None if none was recorded."""
    state = recorded()
    (prefect_home() / STATE).unlink(missing_ok=True)
    if state is None or not alive(state["pid"]):
        return None
    pid = state["pid"]
    for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + wait
        while alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if not alive(pid):
            break
    return pid
