"""Benchmark: run the demo flow several times and print stage wall times, accuracies and sizes.

    .venv/bin/python bench/bench_demo.py [--repeats 3] [--workdir bench-demo]

The dataset and baseline are made once (not timed); each repeat is a full flow run in
Prefect's ephemeral mode, into a fresh output root so that no stage is cached. Times are
medians (with min-max) since these machines are shared.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from common import demo_config, median_range, parse_args


def main() -> int:
    args = parse_args(__doc__)
    config = demo_config(args.workdir)
    from pruneflow.flows.cli import run_settings
    from pruneflow.flows.prune import prune_flow
    from pruneflow.tasks.report.summary import render_table

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
        print(f"  {stage:<26} {median_range(values)}")
    flows = [seconds for seconds, _ in runs]
    print(f"  {'whole flow':<26} {median_range(flows)}")
    last = runs[-1][1]
    print(f"\nLast run ({last.run_dir}):\n{render_table(last)}")
    accuracies = sorted(summary.pruned.accuracy for _, summary in runs)
    ratios = sorted(summary.sizes.zip_ratio for _, summary in runs)
    print(f"\nPruned test accuracy over runs: {', '.join(f'{a:.4f}' for a in accuracies)}")
    print(f"Zip-deflate ratio over runs: {', '.join(f'{r:.3f}' for r in ratios)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
