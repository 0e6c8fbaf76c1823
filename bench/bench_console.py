"""What a person reads: the lines a two-target sweep of the demo prints, its output not a terminal.

    .venv/bin/python bench/bench_console.py [--workdir bench-demo] [--targets 0.5 0.8]

Prepares the demo in --workdir (data, baseline) if needed, then runs `pruneflow sweep` over the
targets into an empty output root, stdout and stderr to one pipe as a CI log or a worker's log
takes them. Printed: every line besides the tables' rows (Markdown rows, `|...`), their count
(the target: at most 60), the count with the tables, and the lines of the run's debug.log.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import yaml
from common import parse_args

PRUNEFLOW = str(Path(sys.executable).with_name("pruneflow"))


def extra(parser) -> None:
    parser.add_argument("--targets", type=float, nargs="+", default=[0.5, 0.8])


def main() -> None:
    args = parse_args(__doc__, extra)
    from pruneflow.tasks.demo import prepare_demo

    workdir = args.workdir.resolve()
    demo = yaml.safe_load(prepare_demo(workdir).read_text())
    output_root = workdir / "outputs-console"
    shutil.rmtree(output_root, ignore_errors=True)
    config = workdir / "console.yaml"
    config.write_text(yaml.safe_dump({**demo, "output_root": str(output_root), "sweep": {"targets": args.targets}}))
    done = subprocess.run([PRUNEFLOW, "sweep", str(config)], cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=3600)
    lines = done.stdout.splitlines()
    besides = [line for line in lines if not line.startswith("|")]
    print("\n".join(besides))
    [debug] = output_root.glob("runs/*/debug.log") or [None]
    print(f"\nexit status {done.returncode}; {len(besides)} lines besides the tables (target: at most 60), "
          f"{len(lines)} with them; debug.log: {len(debug.read_text().splitlines()) if debug else 'none'} lines")


if __name__ == "__main__":
    main()
