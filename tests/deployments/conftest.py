"""A real Prefect server, work pool, deployments and worker, shared by the tests in this folder."""

from dataclasses import dataclass
from pathlib import Path

import pytest
from prefect.settings import PREFECT_API_URL, temporary_settings

from deployments.gpu import REPO, DeploymentSettings, apply
from deployments.local import free_port, server_env, start_server, start_worker
from tasks.confine import ROOTS_ENV

POOL = "pruneflow-gpu"


@dataclass
class Live:
    port: int
    home: Path

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    @property
    def demo_dir(self) -> Path:
        """Where the deployments' default parameters expect the demo dataset."""
        return self.home / "demo"

    def prepared_demo(self) -> Path:
        """The demo dataset and baseline in demo_dir, made on first use (about 25 s)."""
        from tasks.demo import prepare_demo

        prepare_demo(self.demo_dir)
        return self.demo_dir


@pytest.fixture(scope="package")
def live(tmp_path_factory):
    """Server, work pool, both deployments and a process worker; all stopped by PID at the end."""
    home = tmp_path_factory.mktemp("prefect-live")
    port = free_port()
    env = server_env(port)
    env.update(
        PREFECT_HOME=str(home / "prefect"),
        PREFECT_RESULTS_LOCAL_STORAGE_PATH=str(home / "results"),
        PREFECT_WORKER_QUERY_SECONDS="1",
    )
    # The worker's runs may use this session's temporary folders (the tiny data, the baselines,
    # the outputs, the demo) and nothing else.
    env.update({name: str(tmp_path_factory.getbasetemp()) for name in ROOTS_ENV.values()})
    server = start_server(port, env, home / "server.log")
    worker = None
    try:
        with temporary_settings(updates={PREFECT_API_URL: env["PREFECT_API_URL"]}):
            apply(DeploymentSettings(work_pool=POOL, demo_dir=Live(port, home).demo_dir))
            worker = start_worker(POOL, env, home / "worker.log", cwd=REPO)
            yield Live(port=port, home=home)
    finally:
        if worker is not None:
            worker.stop()
        server.stop()
        assert not server.running() and (worker is None or not worker.running())


