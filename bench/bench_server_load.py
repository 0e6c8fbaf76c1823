"""Load on the Prefect server: N presses of Run at once, two process workers, PostgreSQL against SQLite.

    .venv/bin/python bench/bench_server_load.py [--runs 50] [--workers 2] [--worker-limit 4]
        [--backends postgresql,sqlite] [--timeout 1800] [--workdir bench-load]

For each backend: a Prefect server on 127.0.0.1 (on its own PostgreSQL cluster, or on SQLite),
the work pool and the deployments, and `--workers` process workers, each running at most
`--worker-limit` flow runs at a time. Then `--runs` create_flow_run calls for `prune/manual`
(a tiny config: 64 16x16 images, a small CNN, 2 epochs) are released at the same moment, each
from its own client, as that many users pressing Run. Printed per backend: the create_flow_run
errors, the runs completed, failed or crashed, lost (created, then never found) or stuck (not
final at the timeout), the time from the presses until the last run ended, and the most
trainings at once (the GPU slot limit is 1). Everything started is stopped by PID.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from common import parse_args


def extra(parser) -> None:
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--worker-limit", type=int, default=4, help="flow runs at once per worker")
    parser.add_argument("--backends", default="postgresql,sqlite")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds to wait for the runs to end")


def tiny_config(workdir: Path) -> dict:
    """The tests' tiny dataset and baseline, made once in `workdir`; the config as a mapping."""
    from tests.helpers import make_config_dict, train_tiny_baseline, write_tiny_dataset

    data, baseline = workdir / "data", workdir / "baseline.h5"
    if not (data / "test.csv").is_file():
        write_tiny_dataset(data)
    if not baseline.is_file():
        train_tiny_baseline(data, baseline)
    return make_config_dict(data, baseline, workdir / "outputs")


def run_backend(backend: str, config: dict, args) -> dict:
    """One backend's figures, from a fresh server, database and workers."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from pruneflow.deployments.gpu import REPO, DeploymentSettings, apply
    from pruneflow.deployments.load import create_at_once, most_at_once, task_intervals, wait_for
    from pruneflow.deployments.local import server_env, start_server, start_worker
    from pruneflow.deployments.postgres import start_postgres
    from pruneflow.flows.server import free_port
    from pruneflow.tasks.preflight.confine import ROOTS_ENV

    home = (args.workdir / backend).resolve()  # absolute: the flow runs start in the repository
    shutil.rmtree(home, ignore_errors=True)
    shutil.rmtree(Path(config["output_root"]), ignore_errors=True)
    port = free_port()
    env = server_env(port)
    env.update(PREFECT_HOME=str(home / "prefect"), PREFECT_WORKER_QUERY_SECONDS="1")
    env.update({name: str(args.workdir.resolve()) for name in ROOTS_ENV.values()})
    cluster_folder = Path(tempfile.mkdtemp(prefix="pruneflow-bench-postgres-")) if backend == "postgresql" else None
    started = []
    try:
        database = None
        if cluster_folder is not None:
            cluster_folder.chmod(0o711)  # PostgreSQL runs as `postgres` when we are root: it must enter it
            started.append(postgres := start_postgres(cluster_folder / "cluster", free_port(), home / "postgres.log"))
            database = postgres.url()
        started.append(start_server(port, server_env(port, env, database), home / "server.log"))
        with temporary_settings(updates={PREFECT_API_URL: env["PREFECT_API_URL"]}):
            apply(DeploymentSettings(work_pool="pruneflow-gpu", demo_dir=args.workdir / "demo"))
            for i in range(args.workers):
                worker = start_worker("pruneflow-gpu", env, home / f"worker-{i}.log", cwd=REPO, limit=args.worker_limit)
                started.append(worker)
            pressed = datetime.now(timezone.utc)
            submitted = create_at_once("prune/manual", [{"config": config}] * args.runs)
            outcome = wait_for(submitted.ids, args.timeout)
            time.sleep(2)  # task runs are recorded from events, just after their flow run's end
            trainings = task_intervals(submitted.ids, "prune_train", state="Completed")  # not the Cached ones
    finally:
        for process in reversed(started):
            process.stop()
        if cluster_folder is not None:
            shutil.rmtree(cluster_folder, ignore_errors=True)
    return {
        "backend": backend, "runs": args.runs, "create errors": len(submitted.errors),
        "completed": outcome.completed,
        "failed/crashed": sum(n for state, n in outcome.states.items() if state in ("FAILED", "CRASHED")),
        "lost": len(outcome.missing), "stuck": len(outcome.stuck),
        "last end (s)": f"{(outcome.last_end - pressed).total_seconds():.0f}" if outcome.last_end else "-",
        "trainings at once": most_at_once(trainings), "errors": sorted(set(submitted.errors))[:3],
    }


def main() -> int:
    args = parse_args(__doc__, extra)
    args.workdir = args.workdir if args.workdir != Path("bench-demo") else Path("bench-load")
    args.workdir.mkdir(parents=True, exist_ok=True)
    config = tiny_config(args.workdir.resolve())
    rows = [run_backend(backend, config, args) for backend in args.backends.split(",")]
    columns = [c for c in rows[0] if c != "errors"]
    print(f"\n{args.runs} presses of Run at once, {args.workers} process workers (at most {args.worker_limit} runs "
          "each at a time), a tiny prune config\n")
    print("| " + " | ".join(columns) + " |")
    print("|" + "|".join(" --- " for _ in columns) + "|")
    for row in rows:
        print("| " + " | ".join(str(row[c]) for c in columns) + " |")
    for row in rows:
        for error in row["errors"]:
            print(f"{row['backend']}: {error}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
