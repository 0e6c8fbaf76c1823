"""Benchmark: run the demo flow several times and print stage wall times, accuracies and sizes.

    .venv/bin/python bench/bench_demo.py [--repeats 3] [--workdir bench-demo]

The dataset and baseline are made once (not timed); each repeat is a full flow run in
Prefect's ephemeral mode, into a fresh output root so that no stage is cached. Times are
medians (with min-max) since these machines are shared.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=Path("bench-demo"))
    args = parser.parse_args()
    from flows.cli import main as cli_main
    from flows.cli import run_settings
    from flows.prune import prune_flow
    from tasks.config import load_config
    from tasks.report import render_table

    # The demo command makes the data and the baseline; its own run doubles as warm-up.
    if cli_main(["demo", "--workdir", str(args.workdir)]) != 0:
        return 1
    config = load_config(args.workdir / "pruneflow.yaml")
    runs = []
    for i in range(args.repeats):
        root = Path(tempfile.mkdtemp(prefix="pruneflow-bench-"))
        started = time.perf_counter()
        with run_settings():
            summary = prune_flow(config.model_copy(update={"output_root": root}))
        runs.append((time.perf_counter() - started, summary))
        print(f"repeat {i + 1}/{args.repeats}: {runs[-1][0]:.1f} s, outputs in {root}", flush=True)

    print(f"\nStage wall times over {args.repeats} runs (median, min-max), seconds:")
    for stage in runs[0][1].stage_seconds:
        values = [summary.stage_seconds[stage] for _, summary in runs]
        print(f"  {stage:<18} {statistics.median(values):7.2f}  ({min(values):.2f}-{max(values):.2f})")
    flows = [seconds for seconds, _ in runs]
    print(f"  {'whole flow':<18} {statistics.median(flows):7.2f}  ({min(flows):.2f}-{max(flows):.2f})")
    last = runs[-1][1]
    print(f"\nLast run ({last.run_dir}):\n{render_table(last)}")
    accuracies = sorted(summary.pruned.accuracy for _, summary in runs)
    ratios = sorted(summary.sizes.zip_ratio for _, summary in runs)
    print(f"\nPruned test accuracy over runs: {', '.join(f'{a:.4f}' for a in accuracies)}")
    print(f"Zip-deflate ratio over runs: {', '.join(f'{r:.3f}' for r in ratios)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
