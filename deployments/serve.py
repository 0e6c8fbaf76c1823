"""Try pruneflow's deployments on one machine: PostgreSQL, a server, the GPU work pool, the deployments, a worker.

    .venv/bin/python -m pruneflow.deployments.serve [--port 4200] [--timezone UTC] [--demo-dir demo] [--state-dir .state]
                                          [--config pruneflow.yaml] [--alert-webhook URL]

Prepares the demo (its data are the deployments' default parameters), or with --config takes
that run as the deployments' default instead (no demo is made), starts a PostgreSQL
cluster of its own in STATE_DIR/postgres (made on first use, reused after, so runs are kept)
on a free port of 127.0.0.1, starts `prefect server` on 127.0.0.1 with its database there,
creates the process work pool, applies the `nightly` and `manual` deployments of both flows,
the automations that reschedule the runs of a worker that died (pruneflow.deployments.recovery) and,
with --alert-webhook, the alerts of docs/alerts.md, and starts a worker on the pool.
Ctrl-C stops the worker, the server and PostgreSQL, by their PIDs.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path

from pruneflow.deployments.gpu import REPO, DeploymentSettings, apply
from pruneflow.deployments.local import server_env, start_server, start_worker
from pruneflow.deployments.postgres import start_postgres
from pruneflow.flows.server import free_port, require_free_port
from pruneflow.tasks.core.errors import PruneflowError
from pruneflow.tasks.preflight.confine import ROOTS_ENV, roots_env_of
from pruneflow.tasks.specs.config import load_config


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def run_roots(config: Path | None, demo_dir: Path) -> dict[str, str]:
    """PRUNEFLOW_*_ROOTS for the worker: the folders of the config file's CSVs, baseline and
    output root; without a config file, the demo's folder (the demo prepared there first)."""
    if config is None:
        from pruneflow.tasks.demo import prepare_demo

        prepare_demo(demo_dir)
        return {name: str(demo_dir.resolve()) for name in ROOTS_ENV.values()}
    return roots_env_of(load_config(config))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pruneflow.deployments.serve", description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=4200)
    parser.add_argument("--pool", default="pruneflow-gpu")
    parser.add_argument("--timezone", default="UTC", help="time zone of the nightly 02:00 schedule")
    parser.add_argument("--demo-dir", type=Path, default=REPO / "demo")
    parser.add_argument(
        "--state-dir", type=Path, default=REPO / ".state",
        help="where the server's PostgreSQL cluster lives (STATE_DIR/postgres), kept from one start to the next",
    )
    parser.add_argument(
        "--config", type=Path,
        help="a pruneflow.yaml: the deployments' default run instead of the demo; the worker's runs may read and write "
        "the folders its paths name",
    )
    parser.add_argument("--alert-webhook", help="URL to post alerts to as JSON {subject, body} (docs/alerts.md)")
    args = parser.parse_args(argv)

    from prefect.settings import PREFECT_API_URL, temporary_settings

    # SIGTERM (a service manager, `timeout`) must stop the children too, as Ctrl-C does.
    signal.signal(signal.SIGTERM, _interrupt)

    env = server_env(args.port)
    logs = args.state_dir / "logs"
    postgres = server = worker = None
    try:
        require_free_port(args.port)
        # Runs started from the UI may read and write the default run's folders only.
        env.update(run_roots(args.config, args.demo_dir))
        print(f"Starting PostgreSQL in {args.state_dir / 'postgres'} (log: {logs / 'postgres.log'})", flush=True)
        postgres = start_postgres(args.state_dir / "postgres", free_port(), logs / "postgres.log")
        print(f"Starting the Prefect server on 127.0.0.1:{args.port} (log: {logs / 'server.log'})", flush=True)
        # The database URL goes to the server only: the worker and its flow runs need none.
        server = start_server(args.port, server_env(args.port, env, postgres.url()), logs / "server.log")
        settings = DeploymentSettings(
            work_pool=args.pool, timezone=args.timezone, demo_dir=args.demo_dir, config=args.config,
            alert_webhook=args.alert_webhook,
        )
        with temporary_settings(updates={PREFECT_API_URL: env["PREFECT_API_URL"]}):
            apply(settings)
        worker = start_worker(args.pool, env, logs / "worker.log", cwd=REPO)
        print(
            f"\nUI: http://127.0.0.1:{args.port}  (server PID {server.pid}, worker PID {worker.pid}, "
            f"PostgreSQL PID {postgres.pid} on port {postgres.port}, log {logs / 'worker.log'})\n"
            f"Run it now: Deployments > prune/manual > Run > Custom run, or\n"
            f"  PREFECT_API_URL={env['PREFECT_API_URL']} .venv/bin/prefect deployment run prune/manual\n"
            "Ctrl-C stops the worker, the server and PostgreSQL.",
            flush=True,
        )
        while server.running() and worker.running() and postgres.running():
            time.sleep(1)
        print("PostgreSQL, the server or the worker stopped; see their logs.", file=sys.stderr)
        return 1
    except PruneflowError as error:
        print(f"serve: error: {error}", file=sys.stderr)
        return 2
    except RuntimeError as error:  # PostgreSQL or the server did not come up: their logs say why
        print(f"serve: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        # The server before its database, so that it does not lose it mid-request.
        for process in (worker, server, postgres):
            if process is not None:
                process.stop()


if __name__ == "__main__":
    sys.exit(main())
