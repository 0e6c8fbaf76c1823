"""`python -m pruneflow.deployments.serve`: everything up for a user on one machine, on PostgreSQL, and all of it stopped."""

import os
import re
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

from pruneflow.deployments.gpu import REPO
from pruneflow.flows.server import free_port
from pruneflow.tasks.preflight.confine import ROOTS_ENV
from pruneflow.tasks.specs.config import load_config
from tests.helpers.polling import wait_until


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_serve_starts_postgres_server_pool_deployments_and_worker_and_stops_them(live, tmp_path, cluster_folder):
    port = free_port()
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), "PYTHONUNBUFFERED": "1"}
    env.pop("PREFECT_API_URL", None)
    # Started as `... serve &` in a script starts it: ignoring SIGINT, which its children inherit.
    serve = subprocess.Popen(
        ["sh", "-c", 'trap "" INT; exec "$0" "$@"', sys.executable, "-m", "pruneflow.deployments.serve",
         "--port", str(port), "--config", str(live.config), "--state-dir", str(cluster_folder)],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    try:
        output = []
        for line in serve.stdout:
            output.append(line)
            if line.startswith("UI: "):
                break
        else:
            raise AssertionError("serve ended before it was up:\n" + "".join(output[-40:]))
        server_pid, worker_pid, postgres_pid = map(
            int, re.search(r"server PID (\d+), worker PID (\d+), PostgreSQL PID (\d+)", line).groups()
        )
        assert alive(server_pid) and alive(worker_pid) and alive(postgres_pid)
        # The worker's runs may read and write the default run's folders, and nothing else.
        config = load_config(live.config)
        def worker_environ() -> dict[str, str]:
            # Empty while the worker's launcher execs into it (it resets SIGINT, then execs the worker).
            text = Path(f"/proc/{worker_pid}/environ").read_text()
            return dict(entry.split("=", 1) for entry in text.split("\0") if "=" in entry)

        environ = wait_until(worker_environ, 30, "the worker's environment")
        assert environ[ROOTS_ENV["data"]] == str(config.dataset.train_csv.parent)
        assert environ[ROOTS_ENV["models"]] == str(config.model.baseline.parent)
        assert environ[ROOTS_ENV["outputs"]] == str(config.output_root)
        url = f"http://127.0.0.1:{port}/api/deployments/name/prune/manual"
        with urllib.request.urlopen(url, timeout=10) as response:
            assert response.status == 200
        worker_log = cluster_folder / "logs" / "worker.log"
        wait_until(lambda: "started!" in worker_log.read_text(), 60, "the worker started")  # its handlers set
        serve.send_signal(signal.SIGTERM)  # as a service manager would stop it
        assert serve.wait(timeout=60) == 0
        said = serve.stdout.read()
    finally:
        if serve.poll() is None:
            os.killpg(serve.pid, signal.SIGKILL)
            serve.wait()
    assert not alive(server_pid) and not alive(worker_pid) and not alive(postgres_pid)
    # Each stopped on its SIGTERM, none killed: the worker too, though its parent ignores SIGINT.
    assert "did not stop within" not in said, said
    assert "stopped!" in worker_log.read_text()
    assert (cluster_folder / "postgres" / "data" / "PG_VERSION").is_file()  # kept for the next start


def test_serve_on_a_taken_port_says_so_and_starts_nothing(tmp_path):
    """A port another program listens on is refused before PostgreSQL or the server is started:
    one line, exit 2, no cluster made."""
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "pruneflow.deployments.serve", "--port", str(port), "--state-dir", str(tmp_path / "state")],
            cwd=REPO, capture_output=True, text=True, timeout=120,
        )
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip() == (
        f"serve: error: --port {port}: 127.0.0.1:{port} is taken (Address already in use); stop what listens there "
        "(a server started before?) or pass a free port"
    )
    assert "Starting" not in done.stdout and not (tmp_path / "state" / "postgres").exists()
