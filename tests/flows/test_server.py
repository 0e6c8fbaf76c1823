"""The temporary Prefect server a `pruneflow run` boots in a process of its own."""

import urllib.error
import urllib.request

import pytest

from pruneflow.flows.server import TemporaryServer
from pruneflow.tasks.core.errors import PruneflowError

pytestmark = pytest.mark.services  # each test starts a server process by itself


def test_the_server_answers_its_api_once_waited_for_and_is_gone_once_stopped():
    server = TemporaryServer()
    try:
        server.wait()
        with urllib.request.urlopen(f"{server.api_url}/admin/version", timeout=5) as response:
            assert response.status == 200
    finally:
        server.stop()
    assert server.process.returncode is not None
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"{server.api_url}/health", timeout=5)


def test_a_server_that_cannot_start_is_reported_with_its_exit_code_and_what_it_said(tmp_path, monkeypatch):
    monkeypatch.setenv("PREFECT_SERVER_DATABASE_CONNECTION_URL", f"sqlite+aiosqlite:///{tmp_path}/no/such/folder/x.db")
    server = TemporaryServer()
    with pytest.raises(PruneflowError) as error:
        server.wait()
    message = str(error.value)
    assert f"did not start on 127.0.0.1:{server.port} (it exited with code {server.process.returncode})" in message
    assert "unable to open database file" in message
    assert "set PREFECT_API_URL" in message
