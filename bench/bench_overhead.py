"""The workflow's own cost: `pruneflow run` against the same recipe as a plain TFMOT script.

    .venv/bin/python bench/bench_overhead.py [--repeats 3] [--workdir bench-demo] [--config CONFIG]

The recipe is the config's (the demo's by default): its data, baseline, schedule, epochs and
optimizer, without TFLite exports (the plain script makes none). Each repeat, alternating so
that the machine's noise falls on both alike, runs as fresh processes:
- `plain`: bench/plain_tfmot.py, the recipe written as the tutorial does it by hand;
- `first`: `pruneflow run` into an empty output root;
- `cached`: the same command again, every stage stored.
Printed: the median wall time of each (min-max), the ratios first/plain (target 1.3) and the
cached run's wall time (target 6 s), each part's time against the script's, and the accuracy
and zipped sizes of both.
"""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml
from common import demo_config, median_range, parse_args

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
PRUNEFLOW = str(Path(sys.executable).with_name("pruneflow"))


def extra(parser) -> None:
    parser.add_argument("--config", type=Path, help="a run config (default: the demo's, made in --workdir)")


def recipe(args) -> Path:
    """The config as a YAML file in the workdir: absolute paths, no TFLite files."""
    from pruneflow.tasks.specs.config import load_config

    config = load_config(args.config) if args.config else demo_config(args.workdir)
    dumped = config.model_dump(mode="json")
    dumped["export"] = {**dumped["export"], "formats": []}
    path = (args.workdir / "overhead.yaml").resolve()
    path.write_text(yaml.safe_dump(dumped, sort_keys=False))
    return path


def timed_run(command: list[str]) -> tuple[float, str]:
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"{' '.join(command)} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return seconds, done.stdout


def summary_of(output_root: Path) -> dict:
    [path] = sorted((output_root / "runs").glob("*/summary.json"))[-1:]
    return json.loads(path.read_text())


def main() -> int:
    args = parse_args(__doc__, extra)
    args.workdir.mkdir(parents=True, exist_ok=True)
    config_path = recipe(args)
    config = yaml.safe_load(config_path.read_text())
    walls: dict[str, list[float]] = {"plain": [], "first": [], "cached": []}
    parts: dict[str, list[dict]] = {"plain": [], "first": [], "cached": []}
    figures: dict[str, dict] = {}
    for repeat in range(args.repeats):
        output = (args.workdir / "overhead-outputs").resolve()
        shutil.rmtree(output, ignore_errors=True)
        run_config = output.with_suffix(".yaml")
        run_config.write_text(yaml.safe_dump({**config, "output_root": str(output)}, sort_keys=False))
        plain_out = (args.workdir / "overhead-plain").resolve()
        shutil.rmtree(plain_out, ignore_errors=True)

        seconds, stdout = timed_run([PYTHON, str(REPO / "bench" / "plain_tfmot.py"), str(run_config), str(plain_out)])
        plain = json.loads(stdout.strip().splitlines()[-1])
        walls["plain"].append(seconds)
        parts["plain"].append(plain["seconds"])
        figures["plain"] = plain
        for name in ("first", "cached"):
            seconds, _ = timed_run([PRUNEFLOW, "run", str(run_config)])
            summary = summary_of(output)
            walls[name].append(seconds)
            parts[name].append(summary["stage_seconds"])
            figures[name] = summary
        print(f"repeat {repeat + 1}/{args.repeats}: " + ", ".join(f"{n} {w[-1]:.2f} s" for n, w in walls.items()),
              flush=True)

    print(f"\n{config_path.name}: {args.repeats} alternating repeats, wall seconds of the whole command (median, min-max)")
    for name, label in (("plain", "plain TFMOT script"), ("first", "pruneflow run, first"),
                        ("cached", "pruneflow run, cached")):
        print(f"  {label:<24} {median_range(walls[name])}")
    ratios = [first / plain for first, plain in zip(walls["first"], walls["plain"])]
    print(f"  first / plain            {statistics.median(ratios):7.2f}  ({min(ratios):.2f}-{max(ratios):.2f});"
          " target at most 1.3")
    print(f"  cached                   {statistics.median(walls['cached']):7.2f} s; target at most 6 s")

    print("\nParts, seconds (median): plain script | pruneflow first | pruneflow cached")
    names = list(dict.fromkeys([*parts["plain"][0], *parts["first"][0], *parts["cached"][0]]))
    for part in names:
        cells = []
        for name in ("plain", "first", "cached"):
            values = [run[part] for run in parts[name] if part in run]
            cells.append(f"{statistics.median(values):7.2f}" if values else "      -")
        print(f"  {part:<28} {' | '.join(cells)}")

    plain, first = figures["plain"], figures["first"]
    print("\nResults (last repeat): plain script | pruneflow")
    print(f"  baseline test accuracy   {plain['baseline_accuracy']:.4f} | {first['baseline']['accuracy']:.4f}")
    print(f"  pruned test accuracy     {plain['pruned_accuracy']:.4f} | {first['pruned']['accuracy']:.4f}")
    print(f"  baseline zip bytes       {plain['baseline_zip']:,} | {first['sizes']['baseline']['zip_bytes']:,}")
    print(f"  pruned zip bytes         {plain['pruned_zip']:,} | {first['sizes']['pruned']['zip_bytes']:,}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
