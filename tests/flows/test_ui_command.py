"""`pruneflow ui`: a Prefect server with its UI that outlives the commands, found and used by them."""

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import yaml

from pruneflow.deployments.gpu import REPO
from pruneflow.flows.server import free_port
from pruneflow.flows.ui import STATE, alive, stop_ui


def pruneflow(*args: str, env: dict) -> subprocess.CompletedProcess:
    command = [str(Path(sys.executable).with_name("pruneflow")), *args]
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def get(url: str) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers={"Accept": "text/html"})  # as a browser asks for a page
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.status, response.read()


@pytest.mark.services
def test_the_ui_starts_once_keeps_a_commands_run_on_view_after_it_ends_and_stops(
    seed, config_dict, tmp_path, monkeypatch
):
    home, port = tmp_path / "prefect-home", free_port()
    env = {name: value for name, value in os.environ.items() if name != "PREFECT_API_URL"} | {"PREFECT_HOME": str(home)}
    monkeypatch.setenv("PREFECT_HOME", str(home))  # for stop_ui below, whatever happens
    try:
        started = pruneflow("ui", "--port", str(port), env=env)
        assert started.returncode == 0, started.stderr[-2000:]
        assert started.stdout.startswith(f"Prefect UI started: http://127.0.0.1:{port}\n")
        pid = json.loads((home / STATE).read_text())["pid"]
        again = pruneflow("ui", "--port", str(free_port()), env=env)  # the one running is reused, whatever the port
        assert again.stdout.startswith(f"Prefect UI already running: http://127.0.0.1:{port}\n")

        seed(config_dict)
        path = tmp_path / "run.yaml"
        path.write_text(yaml.safe_dump(config_dict))
        done = pruneflow("run", str(path), env=env)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        # The command ran its flow on the UI's server, which still shows it now that the command is gone.
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/api/flow_runs/filter", data=b"{}", headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            [flow_run] = json.loads(response.read())
        assert flow_run["state_name"] == "Completed"
        # The command gave the link to its run's page, which works now that it has ended.
        assert f"View at http://127.0.0.1:{port}/runs/flow-run/{flow_run['id']}" in done.stderr
        status, page = get(f"http://127.0.0.1:{port}/runs/flow-run/{flow_run['id']}")
        assert status == 200 and b"<html" in page.lower()

        stopped = pruneflow("ui", "--stop", env=env)
        assert stopped.stdout == f"Stopped the Prefect UI server (PID {pid}).\n"
        assert not alive(pid) and not (home / STATE).exists()
        with pytest.raises(OSError):
            get(f"http://127.0.0.1:{port}/api/health")
        assert pruneflow("ui", "--stop", env=env).stdout == "No Prefect UI server of pruneflow was running.\n"
    finally:
        stop_ui()
