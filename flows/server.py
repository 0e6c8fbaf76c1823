"""The temporary Prefect server of a `pruneflow` command, booting from the command's first moment.

Without a server (no PREFECT_API_URL), Prefect starts a temporary one when the flow first calls
its API: the command has then imported Prefect (and Prefect's server modules, 3 s more, only to
start it), and waits again while the server's own process imports them (about 3.5 s on 2
cores). Started here instead, the same app (Prefect's API under uvicorn, its UI off, its SQLite
database under PREFECT_HOME) boots in its own process while the command imports what it runs,
and the command never imports the server's modules. It is stopped by its PID when the command
ends. With PREFECT_API_URL set, in the environment or the Prefect profile, that server is used
and none is started.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

from tasks.errors import PruneflowError

STARTUP_TIMEOUT = 90.0  # seconds: 12-18 s on a busy 2-core machine, with the database to create


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class TemporaryServer:
    """Prefect's API on a free port of 127.0.0.1, booting in a process of its own from creation."""

    def __init__(self) -> None:
        self.port = free_port()
        self.output = tempfile.TemporaryFile()  # what it says, shown if it fails to start
        env = {
            **os.environ, "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        }
        self.process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "--factory", "prefect.server.api.server:create_app",
             "--host", "127.0.0.1", "--port", str(self.port), "--log-level", "error"],
            env=env, stdin=subprocess.DEVNULL, stdout=self.output, stderr=subprocess.STDOUT, start_new_session=True,
        )

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    def wait(self, timeout: float = STARTUP_TIMEOUT) -> None:
        """Return once it answers; PruneflowError with what it said if it exits or never answers."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.process.poll() is None:
            try:
                with urllib.request.urlopen(f"{self.api_url}/health", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.05)
        self.stop()
        self.output.seek(0)
        said = self.output.read().decode(errors="replace")[-2000:]
        raise PruneflowError(
            f"the temporary Prefect server did not start on 127.0.0.1:{self.port} in {timeout:.0f} s:\n{said}\n"
            "Start one yourself (`prefect server start`) and set PREFECT_API_URL to its API to use it instead."
        )

    def stop(self) -> None:
        """SIGTERM by its PID, then SIGKILL if it has not ended within 10 s."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.output.close()
