"""A real Prefect server on PostgreSQL, work pool, deployments and worker, shared by the tests in this folder."""

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import pytest
import yaml
from prefect.settings import PREFECT_API_URL, temporary_settings

from pruneflow.deployments.gpu import REPO, DeploymentSettings, apply
from pruneflow.deployments.local import Process, server_env, start_server, start_worker
from pruneflow.deployments.postgres import Postgres, bin_dir, start_postgres
from pruneflow.flows.server import free_port
from pruneflow.tasks.core.errors import PruneflowError
from pruneflow.tasks.preflight.confine import ROOTS_ENV
from tests.helpers.data import make_config_dict
from tests.helpers.session import session_folder

POOL = "pruneflow-gpu"
# A dead worker's run is marked Crashed after a minute without heartbeats (two missed), not two.
SILENT_AFTER = timedelta(seconds=60)


def require_postgresql() -> None:
    """Skip where Debian's postgresql is not installed, except in CI, whose .ci/run installs it."""
    try:
        bin_dir()
    except PruneflowError as missing:
        if os.environ.get("CI"):
            pytest.fail(f"{missing} (.ci/run installs it)")
        pytest.skip(str(missing))


def postgres_folder() -> Path:
    """A new folder for a PostgreSQL cluster, under the system's temporary folder.

    Not under pytest's: as root, PostgreSQL runs as the `postgres` user, who cannot enter
    /tmp/pytest-of-root (0700). This one it can enter (0711), so a cluster may be made in it or
    in a folder below it. Remove it with shutil.rmtree once the cluster has stopped.
    """
    folder = Path(tempfile.mkdtemp(prefix="pruneflow-test-postgres-"))
    folder.chmod(0o711)
    return folder


@pytest.fixture
def cluster_folder():
    """A folder for a cluster of the test's own, removed afterwards."""
    require_postgresql()
    folder = postgres_folder()
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@dataclass
class Live:
    port: int
    home: Path
    postgres: Postgres | None = None  # the server's database
    env: dict[str, str] = field(default_factory=dict)  # for clients and workers (no database URL)
    worker: Process | None = None  # a test that kills it starts another in its place
    server: Process | None = None
    server_env: dict[str, str] = field(default_factory=dict)
    config: Path | None = None  # the deployments' default run: the tiny config (the UI form's defaults)

    def restart_server(self) -> float:
        """Stop the server by its PID and start it again on the same port and database; the
        seconds it was away."""
        import time

        stopped = time.monotonic()
        self.server.stop()
        self.server = start_server(self.port, self.server_env, self.home / "server.log")
        return time.monotonic() - stopped

    def ensure_worker(self) -> None:
        """The worker running (a new one if a test killed it), for the tests after."""
        if self.worker is None or not self.worker.running():
            self.worker = start_worker(POOL, self.env, self.home / "worker.log", cwd=REPO)

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    def settings(self, **changes) -> DeploymentSettings:
        """The deployments' settings on this server, with `changes` (e.g. where alerts go)."""
        return DeploymentSettings(work_pool=POOL, config=self.config, silent_after=SILENT_AFTER, **changes)


@pytest.fixture(scope="package")
def live(tmp_path_factory, tiny_data, keras3_baseline):
    """PostgreSQL, a server on it, the work pool, the deployments (their default run: the tiny
    config over a baseline Keras 3 wrote, as most users' are, written as a pruneflow.yaml) and a
    process worker; all stopped by PID at the end, the server before its database."""
    home = tmp_path_factory.mktemp("prefect-live")
    config = home / "pruneflow.yaml"
    config.write_text(yaml.safe_dump(make_config_dict(tiny_data, keras3_baseline, home / "default-outputs")))
    port = free_port()
    env = server_env(port)
    env.update(
        PREFECT_HOME=str(home / "prefect"),
        PREFECT_RESULTS_LOCAL_STORAGE_PATH=str(home / "results"),
        PREFECT_WORKER_QUERY_SECONDS="1",
    )
    # The worker's runs may use this session's temporary folders (the tiny data, the baselines,
    # the outputs, the demo) and nothing else.
    env.update({name: str(session_folder(tmp_path_factory)) for name in ROOTS_ENV.values()})
    require_postgresql()
    folder = postgres_folder()
    postgres = server = worker = live = None
    try:
        postgres = start_postgres(folder, free_port(), home / "postgres.log")
        database_env = server_env(port, env, postgres.url())
        server = start_server(port, database_env, home / "server.log")
        with temporary_settings(updates={PREFECT_API_URL: env["PREFECT_API_URL"]}):
            live = Live(
                port=port, home=home, postgres=postgres, env=env, server=server, server_env=database_env, config=config
            )
            apply(live.settings())
            live.ensure_worker()
            yield live
    finally:
        if live is not None:  # the worker and server of now: a test may have replaced them
            worker, server = live.worker, live.server
        started = [process for process in (worker, server, postgres) if process is not None]
        for process in started:
            process.stop()
        shutil.rmtree(folder, ignore_errors=True)
        assert not any(process.running() for process in started)


@pytest.fixture(autouse=True)
def in_the_deployments_group(request):
    """Under `make test` (pytest-xdist, --dist loadgroup) the tests here share one server and run in
    one process, in order: each must carry the `deployments` group (tests/conftest.py)."""
    if getattr(request.config.option, "loadgroup", False):  # set in each xdist worker under --dist loadgroup
        assert request.node.nodeid.endswith("@deployments"), request.node.nodeid
