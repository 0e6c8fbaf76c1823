"""The Prefect server's PostgreSQL: the live server's runs are rows there; a cluster is made once, reused, stopped by PID."""

import os
import re
import signal
import stat
import uuid
from pathlib import Path

import pytest
from prefect import flow, get_client
from prefect.settings import PREFECT_API_URL, temporary_settings

from pruneflow.deployments import postgres as pg
from pruneflow.deployments.postgres import Cluster, start_postgres
from pruneflow.flows.server import free_port
from pruneflow.tasks.core.errors import PruneflowError
from tests.helpers.polling import wait_until


def family(pid: int) -> set[int]:
    """The PID and those of its children (a postmaster's background processes and backends)."""
    children = set()
    for entry in Path("/proc").iterdir():
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid:
            children.add(int(entry.name))
    return {pid} | children


def alive(pid: int) -> bool:
    """Whether the process runs; a zombie (an orphan whose new parent has not reaped it yet) does not."""
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def wait_gone(pids: set[int], timeout: float = 10) -> set[int]:
    """Those of `pids` still running after up to `timeout` s."""
    try:
        wait_until(lambda: not any(alive(pid) for pid in pids), timeout, f"processes {sorted(pids)} gone", every=0.1)
    except TimeoutError:
        pass
    return {pid for pid in pids if alive(pid)}


@flow
def probe():
    """Never run: only its flow runs are created, to be read back from the database."""


def test_the_live_servers_flow_runs_are_rows_of_its_postgresql_database(live):
    name = f"postgres-probe-{uuid.uuid4().hex[:8]}"
    with temporary_settings(updates={PREFECT_API_URL: live.api}), get_client(sync_client=True) as client:
        flow_run = client.create_flow_run(probe, name=name)
        assert live.postgres.psql(f"SELECT name FROM flow_run WHERE id = '{flow_run.id}'").strip() == name
        client.delete_flow_run(flow_run.id)
    assert live.postgres.psql(f"SELECT count(*) FROM flow_run WHERE id = '{flow_run.id}'").strip() == "0"
    # No SQLite database beside it: the server's home holds none.
    assert not list((live.home / "prefect").glob("*.db"))


@pytest.mark.services
def test_a_cluster_is_made_once_then_reused_with_its_data(cluster_folder):
    cluster = Cluster(cluster_folder / "postgres")
    assert cluster.init() is True
    folder = cluster.folder.stat()
    assert stat.S_IMODE(folder.st_mode) == 0o700 and stat.S_IMODE(cluster.data.stat().st_mode) == 0o700
    if os.geteuid() == 0:  # postgres refuses root: the folder is its system user's
        assert cluster.folder.owner() == cluster.data.owner() == "postgres"
    postgres = start_postgres(cluster.folder, free_port())
    postgres.psql("CREATE TABLE kept (note text); INSERT INTO kept VALUES ('from the first start')")
    postgres.stop()

    assert cluster.init() is False
    again = start_postgres(cluster.folder, free_port())
    try:
        assert again.psql("SELECT note FROM kept").strip() == "from the first start"
        assert again.create_database() is False
        assert again.url() == f"postgresql+asyncpg://prefect@127.0.0.1:{again.port}/prefect"
    finally:
        again.stop()


@pytest.mark.services
def test_stop_by_pid_leaves_no_postgres_process(cluster_folder):
    postgres = start_postgres(cluster_folder, free_port())
    postgres.psql("SELECT 1")
    processes = family(postgres.pid)
    assert len(processes) >= 4  # the postmaster, checkpointer, background writer, walwriter...
    postgres.stop()
    assert not postgres.running()
    assert wait_gone(processes, timeout=0) == set()
    assert not (postgres.cluster.data / "postmaster.pid").exists()
    assert "database system is shut down" in (cluster_folder / "postgres.log").read_text()


@pytest.mark.services
def test_a_cluster_whose_postgres_was_killed_starts_again_with_its_data(cluster_folder):
    postgres = start_postgres(cluster_folder, free_port())
    postgres.psql("CREATE TABLE kept (note text); INSERT INTO kept VALUES ('before the crash')")
    processes = family(postgres.pid)
    os.kill(postgres.pid, signal.SIGKILL)
    postgres.process.popen.wait(timeout=10)
    assert wait_gone(processes) == set()  # its children notice and leave
    assert (postgres.cluster.data / "postmaster.pid").exists()  # stale: it names a dead PID

    again = start_postgres(cluster_folder, free_port())
    try:
        assert again.psql("SELECT note FROM kept").strip() == "before the crash"
    finally:
        again.stop()


@pytest.mark.services
def test_a_cluster_already_running_is_not_started_twice(cluster_folder):
    postgres = start_postgres(cluster_folder, free_port())
    try:
        with pytest.raises(RuntimeError, match="postmaster.pid.* already exists"):
            Cluster(cluster_folder).start(free_port(), log=cluster_folder / "second.log")
        assert postgres.psql("SELECT 1").strip() == "1"
    finally:
        postgres.stop()


def test_without_postgresql_installed_the_error_says_to_install_it(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(pg, "DEBIAN_BIN", tmp_path)
    with pytest.raises(PruneflowError, match=r"install Debian's postgresql \(`apt-get install postgresql`\)"):
        Cluster(tmp_path / "postgres").init()


def test_as_root_a_folder_the_postgres_user_cannot_enter_is_refused(cluster_folder):
    if os.geteuid() != 0:  # only root hands the cluster to the postgres user; CI runs as root
        (pytest.fail if os.environ.get("CI") else pytest.skip)("this test needs root, as in CI")
    private = cluster_folder / "private"
    private.mkdir(mode=0o700)
    with pytest.raises(PruneflowError, match=f"cannot enter {re.escape(str(private))} .*chmod o\\+x"):
        Cluster(private / "postgres").init()
