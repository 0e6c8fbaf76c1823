"""The sweep's search against its grid, on the demo: does a 12-trial search match every point of
the 5-target grid's Pareto front (test accuracy against zip-deflated size), and how many models
does each train?

    .venv/bin/python bench/bench_search.py [--workdir bench-demo] [--trials 12]

Both are `pruneflow sweep` as a user starts it, each in its own output root (nothing of one is
reused by the other): the grid over the demo's default targets (0.5, 0.7, 0.8, 0.9, 0.95); the
search over sparsity 0.5 to 0.95 on a 0.05 grid, its trials stopped after 2 of 8 epochs when
out of the gate's reach. Every file of every point is a point of its front (the Keras .h5 and
each export). Target: every grid front point matched or beaten (a searched file at least as
accurate and at most as large), with fewer models trained to the end.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from bench_models import timed_command, write_config
from common import demo_config, parse_args

from pruneflow.tasks.decide.gate import gate_problem, pareto_front
from pruneflow.tasks.libs.outcome import TargetResult
from pruneflow.tasks.specs.config import SweepConfig


def sweep(workdir: Path, name: str, section: dict) -> tuple[float, dict, list[TargetResult]]:
    base = yaml.safe_load((workdir / "pruneflow.yaml").read_text())
    root = workdir / f"outputs-{name}"
    config = write_config({**base, "output_root": str(root.resolve()), "sweep": section}, workdir / f"bench-{name}.yaml")
    seconds, _ = timed_command("sweep", str(config))
    run_dir = max((root / "runs").iterdir(), key=lambda p: p.stat().st_mtime)
    recorded = json.loads((run_dir / "sweep.json").read_text())
    return seconds, recorded, [TargetResult.model_validate(r) for r in recorded["results"]]


def show_front(name: str, results: list[TargetResult]) -> list[tuple[float, int, str, bool]]:
    """The front's files, each with whether it passes the demo's gate (1 point, min sparsity 0.5)."""
    gate = SweepConfig()
    front = [(f.accuracy, f.zip_bytes, f"{r.point.label('.2f')} {f.format}", gate_problem(r, f, gate) is None)
             for r, f in pareto_front(results)]
    print(f"\n{name} front ({len(front)} files):")
    for accuracy, size, label, passes in front:
        print(f"  {label:32s} test accuracy {accuracy:.4f}  {size:>9,} B zip-deflated  {'pass' if passes else 'fails the gate'}")
    return front


def unmatched(grid_front, search_front, only_passing: bool) -> list[str]:
    return [
        label for accuracy, size, label, passes in grid_front
        if (passes or not only_passing) and not any(a >= accuracy and s <= size for a, s, _, _ in search_front)
    ]


def main() -> int:
    args = parse_args(__doc__, lambda p: p.add_argument("--trials", type=int, default=12))
    demo_config(args.workdir)
    grid_seconds, _, grid = sweep(args.workdir, "grid", {"targets": [0.5, 0.7, 0.8, 0.9, 0.95]})
    search = {"trials": args.trials, "sparsity": [0.5, 0.95], "step": 0.05, "stop_after_epochs": 2}
    search_seconds, recorded, searched = sweep(args.workdir, "search", {"search": search})
    trials = recorded["trials"]
    count = {kind: sum(t["outcome"] == kind for t in trials) for kind in ("completed", "stopped", "repeat", "failed")}

    print(f"\ngrid: {len(grid)} models trained to the end, {grid_seconds:.0f} s wall (`pruneflow sweep`)")
    print(f"search: {len(trials)} trials; {count['completed']} models trained to the end, {count['stopped']} stopped "
          f"early, {count['repeat']} proposed again, {count['failed']} failed; {search_seconds:.0f} s wall")
    for t in trials:
        point = t["point"][0]
        stopped = f" (stopped after epoch {t['stopped_after_epoch']})" if t["stopped_after_epoch"] else ""
        extra = t["outcome"] + stopped
        print(f"  trial {t['number']:2d}: sparsity {point:.2f}  {extra}")
    grid_front, search_front = show_front("grid", grid), show_front("search", searched)
    for only_passing, which in ((False, "every grid front point"), (True, "every grid front point within the gate")):
        missed = unmatched(grid_front, search_front, only_passing)
        print(f"target: {which} matched or beaten by the search: {not missed}"
              + (f" (unmatched: {', '.join(missed)})" if missed else ""))
    print(f"target: fewer models trained to the end: search {count['completed']} vs grid {len(grid)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
