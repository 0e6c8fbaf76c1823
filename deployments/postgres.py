"""A PostgreSQL cluster of its own for the Prefect server: made in a folder, run on 127.0.0.1, stopped by PID."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import stat
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from pruneflow.deployments.local import Process, as_user
from pruneflow.tasks.core.errors import PruneflowError

# Debian's postgresql package puts the server programs here, not on PATH.
DEBIAN_BIN = Path("/usr/lib/postgresql")
INSTALL = "install Debian's postgresql (`apt-get install postgresql`)"
# initdb and postgres refuse to run as root; as root they run as the system user the
# Debian package creates.
SYSTEM_USER = "postgres"
ROLE = "prefect"
DATABASE = "prefect"
HOST = "127.0.0.1"
# A unix socket's path is at most 107 bytes (sun_path); postgres refuses a longer one.
SOCKET_PATH_MAX = 107


def bin_dir() -> Path:
    """The folder of initdb, postgres, pg_isready and psql: initdb's on PATH, else Debian's newest.

    Raises:
        PruneflowError: they are not installed.
    """
    on_path = shutil.which("initdb")
    candidates = [Path(on_path).resolve().parent] if on_path else []
    candidates += sorted(DEBIAN_BIN.glob("*/bin"), key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
                         reverse=True)
    for folder in candidates:
        if all((folder / name).exists() for name in ("initdb", "postgres", "pg_isready", "psql")):
            return folder
    raise PruneflowError(
        f"PostgreSQL's server programs (initdb, postgres) are not on PATH nor under {DEBIAN_BIN}/*/bin: {INSTALL}"
    )


def run_as() -> str | None:
    """The system user to run initdb and postgres as: `postgres` when we are root, else ourselves (None)."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        raise PruneflowError(
            f"PostgreSQL refuses to run as root and there is no `{SYSTEM_USER}` system user to run it as: {INSTALL}, "
            "which creates it"
        ) from None
    return SYSTEM_USER


def database_url(port: int, host: str = HOST, role: str = ROLE, database: str = DATABASE) -> str:
    """The SQLAlchemy URL Prefect's server takes (PREFECT_SERVER_DATABASE_CONNECTION_URL), async driver included."""
    return f"postgresql+asyncpg://{role}@{host}:{port}/{database}"


def _reachable_by(user: str, folder: Path) -> None:
    """Fail, naming the folder in the way, when `user` cannot enter every folder above `folder`."""
    account = pwd.getpwnam(user)
    # Folders still to be made will be made enterable (0755 under the usual umask).
    for parent in filter(Path.exists, reversed(folder.parents)):
        mode = parent.stat()
        if mode.st_mode & stat.S_IXOTH or (mode.st_uid == account.pw_uid and mode.st_mode & stat.S_IXUSR) or (
            mode.st_gid == account.pw_gid and mode.st_mode & stat.S_IXGRP
        ):
            continue
        raise PruneflowError(
            f"{folder}: the `{user}` user, which runs PostgreSQL here since it refuses root, cannot enter {parent} "
            f"(mode {stat.filemode(mode.st_mode)}): put the state folder where it can, e.g. /var/lib/pruneflow, "
            f"or `chmod o+x {parent}`"
        )


@dataclass(frozen=True)
class Cluster:
    """A PostgreSQL cluster in `folder`: its data in data/, its unix socket and by default its log beside them.

    The folder belongs to the user PostgreSQL runs as (`postgres` when we are root) and only to
    it (0700). Clients connect as the superuser `prefect` over 127.0.0.1 or the socket, without
    a password (trust): see docs/operations.md for who that lets in.
    """

    folder: Path

    @property
    def data(self) -> Path:
        return self.folder / "data"

    def initialised(self) -> bool:
        return (self.data / "PG_VERSION").is_file()

    def _prepare_folder(self) -> str | None:
        """Create the folder, private to the user PostgreSQL runs as; that user (None: ourselves)."""
        user = run_as()
        folder = self.folder.resolve()
        if len(str(folder / ".s.PGSQL.65535.lock").encode()) > SOCKET_PATH_MAX:
            raise PruneflowError(
                f"{self.folder}: too long a path for PostgreSQL's unix socket ({SOCKET_PATH_MAX} bytes at most "
                "with its file name): choose a shorter state folder"
            )
        if user is not None:
            _reachable_by(user, folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        if user is not None:
            account = pwd.getpwnam(user)
            os.chown(self.folder, account.pw_uid, account.pw_gid)
        self.folder.chmod(0o700)
        return user

    def init(self) -> bool:
        """Make the cluster unless it is already there; whether it made it.

        initdb writes into data.init/, renamed to data/ once complete, so a cluster interrupted
        while being made is made again rather than half reused.
        """
        initdb = bin_dir() / "initdb"
        user = self._prepare_folder()
        if self.initialised():
            return False
        partial = self.folder / "data.init"
        shutil.rmtree(partial, ignore_errors=True)
        done = subprocess.run(
            [str(initdb), "--pgdata", str(partial.resolve()), "--username", ROLE, "--auth", "trust",
             "--encoding", "UTF8", "--no-locale", "--no-instructions"],
            cwd=self.folder, env=_server_env(), capture_output=True, text=True, **as_user(user),
        )
        if done.returncode != 0:
            raise RuntimeError(f"initdb failed in {partial}:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
        partial.rename(self.data)
        return True

    def start(self, port: int, log: Path | None = None, timeout: float = 60) -> Postgres:
        """Start postgres on 127.0.0.1:port, its socket in the folder; once it accepts connections, the
        running server. A postmaster.pid left by a postgres that died is no obstacle (postgres
        checks that its PID is gone); one of a postgres still running is, and the error says so.

        Raises:
            RuntimeError: it did not accept connections within `timeout` s (with the end of its log).
        """
        server = bin_dir() / "postgres"
        user = self._prepare_folder()
        if not self.initialised():
            raise RuntimeError(f"{self.folder} holds no PostgreSQL cluster: call init() first")
        log = log or self.folder / "postgres.log"
        args = [str(server), "-D", str(self.data.resolve()), "-p", str(port), "-h", HOST,
                "-k", str(self.folder.resolve())]
        process = Process("postgres", args, _server_env(), log, cwd=self.folder, user=user).start()
        postgres = Postgres(self, port, process)
        postgres.wait_ready(timeout)
        return postgres


@dataclass
class Postgres:
    """A running postmaster of a Cluster, our child process: stopped by its PID."""

    cluster: Cluster
    port: int
    process: Process

    @property
    def pid(self) -> int:
        return self.process.pid

    def url(self, database: str = DATABASE) -> str:
        return database_url(self.port, database=database)

    def running(self) -> bool:
        return self.process.running()

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while self.running() and time.monotonic() < deadline:
            ready = subprocess.run(
                [str(bin_dir() / "pg_isready"), "-q", "-h", HOST, "-p", str(self.port), "-U", ROLE, "-d", "postgres",
                 "-t", "2"], env=_client_env(),
            )
            if ready.returncode == 0:
                return
            time.sleep(0.2)
        how = "stopped" if not self.running() else f"did not accept connections on port {self.port} within {timeout} s"
        tail = self.process.log.read_text(errors="replace")[-3000:] if self.process.log.exists() else ""
        self.stop()
        raise RuntimeError(f"PostgreSQL in {self.cluster.folder} {how}; the end of {self.process.log}:\n{tail}")

    def psql(self, sql: str, database: str = DATABASE) -> str:
        """Run SQL through psql as the superuser; what it printed, unaligned, without headers."""
        done = subprocess.run(
            [str(bin_dir() / "psql"), "-h", HOST, "-p", str(self.port), "-U", ROLE, "-d", database,
             "-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1"],
            input=sql, env=_client_env(), capture_output=True, text=True,
        )
        if done.returncode != 0:
            raise RuntimeError(f"psql on port {self.port} failed: {done.stderr.strip()}")
        return done.stdout

    def create_database(self, name: str = DATABASE) -> bool:
        """Create the database unless it exists; whether it did."""
        if self.psql(f"SELECT 1 FROM pg_database WHERE datname = '{name}'", database="postgres").strip():
            return False
        self.psql(f'CREATE DATABASE "{name}"', database="postgres")
        return True

    def stop(self, timeout: float = 60) -> None:
        """SIGINT to the postmaster by its PID (a fast shutdown: SIGTERM would wait for the clients
        to leave), then wait for it; if it has not ended in time, SIGQUIT (an immediate shutdown,
        recovered from at the next start), then SIGKILL. The postmaster waits for its children
        when it shuts down; killed, it leaves them to notice it gone and exit."""
        if not self.running():
            return
        popen = self.process.popen
        for signum, wait in ((signal.SIGINT, timeout), (signal.SIGQUIT, 10)):
            os.kill(self.pid, signum)
            try:
                popen.wait(timeout=wait)
                return
            except subprocess.TimeoutExpired:
                pass
        os.killpg(self.pid, signal.SIGKILL)
        popen.wait(timeout=10)


def start_postgres(folder: Path, port: int, log: Path | None = None) -> Postgres:
    """The cluster in `folder`, made if need be, started on 127.0.0.1:port, with its `prefect` database."""
    cluster = Cluster(folder)
    cluster.init()
    postgres = cluster.start(port, log)
    try:
        postgres.create_database()
    except BaseException:
        postgres.stop()
        raise
    return postgres


def _server_env() -> dict[str, str]:
    # Nothing of ours (PG*, PREFECT_*) for the server; a locale that exists everywhere.
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "TZ": "UTC"}


def _client_env() -> dict[str, str]:
    # A PGPASSWORD, PGSERVICE or PGSSLMODE of the caller's must not change where psql connects.
    return {name: value for name, value in os.environ.items() if not name.startswith("PG")}
