"""The README's advice holds: a Prefect server started with basic auth refuses requests without it."""

import base64
import json
import urllib.error
import urllib.request

import pytest

from pruneflow.deployments.local import server_env, start_server
from pruneflow.flows.server import free_port

PASSWORD = "admin:correct-horse"


def post(url: str, auth: str | None = None) -> int:
    request = urllib.request.Request(url, data=json.dumps({}).encode(), method="POST")
    request.add_header("Content-Type", "application/json")
    if auth:
        request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


@pytest.mark.services
def test_a_server_with_an_auth_string_refuses_callers_without_it(tmp_path):
    from prefect import get_client
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    port = free_port()
    env = server_env(port)
    env.update(PREFECT_HOME=str(tmp_path / "prefect"), PREFECT_SERVER_API_AUTH_STRING=PASSWORD)
    server = start_server(port, env, tmp_path / "server.log")
    try:
        url = f"http://127.0.0.1:{port}/api/deployments/filter"
        assert post(url) == 401
        assert post(url, "admin:wrong") == 401
        assert post(url, PASSWORD) == 200
        # Clients and workers pass it with PREFECT_API_AUTH_STRING.
        with temporary_settings(updates={PREFECT_API_URL: env["PREFECT_API_URL"], PREFECT_API_AUTH_STRING: PASSWORD}):
            with get_client(sync_client=True) as client:
                assert client.read_deployments() == []
        with temporary_settings(updates={PREFECT_API_URL: env["PREFECT_API_URL"], PREFECT_API_AUTH_STRING: None}):
            with get_client(sync_client=True) as client, pytest.raises(Exception, match="401"):
                client.read_deployments()
    finally:
        server.stop()
    assert not server.running()
