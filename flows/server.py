"""The temporary Prefect server of a `pruneflow` command, booting from the command's first moment.

Without a server (no PREFECT_API_URL), Prefect starts a temporary one when the flow first calls
its API: the command has then imported Prefect (and Prefect's server modules, 3 s more, only to
start it), and waits again while the server's own process imports them (about 3.5 s on 2
cores). Started here instead, the same app (Prefect's API under uvicorn, its UI off, its SQLite
database under PREFECT_HOME) boots in its own process while the command imports what it runs,
and the command never imports the server's modules. It is stopped by its PID when the command
ends. With PREFECT_API_URL set, in the environment or the Prefect profile, that server is used
and none is started.

The server's first API request (any route but /health) takes about 0.5 s: FastAPI builds its
routes' state then. A thread of the command makes that request as soon as the server answers,
while the command is still importing, so the flow's own first request does not wait for it.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

from pruneflow.tasks.core.errors import PruneflowError
from pruneflow.tasks.core.imports import imports_without_gc

STARTUP_TIMEOUT = 90.0  # seconds: 12-18 s on a busy 2-core machine, with the database to create


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def require_free_port(port: int) -> None:
    """Refuse a port of 127.0.0.1 another program listens on, before anything is started.

    Raises:
        PruneflowError: the port is taken, naming it.
    """
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as a server binds: a closed one's leftovers do not count
        try:
            sock.bind(("127.0.0.1", port))
        except OSError as error:
            raise PruneflowError(
                f"--port {port}: 127.0.0.1:{port} is taken ({error.strerror}); stop what listens there (a server "
                "started before?) or pass a free port"
            ) from None


def create_app():
    """The temporary server's app (uvicorn's factory, called in the server's process): Prefect's,
    imported with imports_without_gc."""
    with imports_without_gc():
        from prefect.server.api.server import create_app as prefect_app

        return prefect_app()


class TemporaryServer:
    """Prefect's API on a free port of 127.0.0.1, booting in a process of its own from creation."""

    def __init__(self) -> None:
        self.port = free_port()
        self.output = tempfile.TemporaryFile()  # what it says, shown if it fails to start
        env = {
            **os.environ, "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PYTHONSAFEPATH": "1",  # `python -m` must not import a uvicorn or flows folder of the working directory
        }
        self.process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "--factory", "pruneflow.flows.server:create_app",
             "--host", "127.0.0.1", "--port", str(self.port), "--log-level", "error"],
            env=env, stdin=subprocess.DEVNULL, stdout=self.output, stderr=subprocess.STDOUT, start_new_session=True,
        )
        self._ready = False
        self._waiter = threading.Thread(target=self._await_ready, name="pruneflow-server-ready", daemon=True)
        self._waiter.start()

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    def _answers(self, route: str) -> bool:
        try:
            with urllib.request.urlopen(f"{self.api_url}/{route}", timeout=5) as response:
                return response.status == 200
        except OSError:
            return False

    def _await_ready(self) -> None:
        """Poll /health until it answers, then make the first API request (see the module's doc)."""
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline and self.process.poll() is None:
            if self._answers("health"):
                self._ready = self._answers("hello")
                return
            time.sleep(0.05)

    def wait(self) -> None:
        """Return once it answers; PruneflowError with what it said if it exits or never answers."""
        self._waiter.join()
        if self._ready:
            return
        exited = self.process.poll()  # None: it is still trying
        self.stop(keep_output=True)
        self.output.seek(0)
        said = self.output.read().decode(errors="replace")[-2000:].strip()
        self.output.close()
        why = f"no answer in {STARTUP_TIMEOUT:.0f} s" if exited is None else f"it exited with code {exited}"
        raise PruneflowError(
            f"the temporary Prefect server did not start on 127.0.0.1:{self.port} ({why}); it said:\n{said}\n"
            "Start one yourself (`prefect server start`) and set PREFECT_API_URL to its API to use it instead."
        )

    def stop(self, keep_output: bool = False) -> None:
        """SIGTERM by its PID, then SIGKILL if it has not ended within 10 s."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if not keep_output:
            self.output.close()
