"""Benchmark of caching: a first run, an identical re-run, and a re-run after changing only the sparsity.

    .venv/bin/python bench/bench_cache.py [--repeats 3] [--workdir bench-demo]

Runs on the demo (MNIST, small CNN), with the settings of `pruneflow run`. The demo command
first makes the data and the baseline and warms up TensorFlow and Prefect's ephemeral server,
so what is timed is flow runs alone.
Each repeat uses a fresh output root. Figures are medians (min-max); target: the identical
re-run costs under 5% of the first run.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

from common import demo_config, median_range, parse_args


def main() -> int:
    args = parse_args(__doc__)
    demo = demo_config(args.workdir)
    from pruneflow.flows.cli import run_settings
    from pruneflow.flows.prune import prune_flow

    sparser = demo.pruning.model_copy(update={"final_sparsity": 0.7})

    timings: dict[str, list[float]] = {"first": [], "identical": [], "sparsity": []}
    stages: dict[str, list[dict[str, float]]] = {"first": [], "identical": [], "sparsity": []}
    for repeat in range(args.repeats):
        with tempfile.TemporaryDirectory(prefix="pruneflow-bench-") as root, run_settings():
            config = demo.model_copy(update={"output_root": Path(root)})
            for name, run_config in (
                ("first", config), ("identical", config), ("sparsity", config.model_copy(update={"pruning": sparser}))
            ):
                started = time.perf_counter()
                summary = prune_flow(run_config)
                timings[name].append(time.perf_counter() - started)
                stages[name].append(summary.stage_seconds)
        print(f"repeat {repeat + 1}/{args.repeats}: " + ", ".join(f"{n} {t[-1]:.2f} s" for n, t in timings.items()))

    print(f"\nWhole flow runs over {args.repeats} repeats, seconds (median, min-max):")
    for name, label in (("first", "first run"), ("identical", "identical re-run"), ("sparsity", "sparsity 0.8 -> 0.7")):
        print(f"  {label:<22} {median_range(timings[name])}")
    ratios = [again / first for first, again in zip(timings["first"], timings["identical"])]
    print(f"  identical / first      {statistics.median(ratios) * 100:6.2f} %  "
          f"({min(ratios) * 100:.2f}-{max(ratios) * 100:.2f}); target < 5 %")

    print("\nPer stage, seconds (median): first run | identical re-run | after changing only the sparsity")
    for stage in stages["first"][0]:
        cells = [statistics.median(run[stage] for run in stages[name]) for name in ("first", "identical", "sparsity")]
        print(f"  {stage:<26} {cells[0]:7.2f} | {cells[1]:7.2f} | {cells[2]:7.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
