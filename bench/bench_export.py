"""Benchmark: size, accuracy and latency of every deployable file of the baseline and the pruned model.

    .venv/bin/python bench/bench_export.py [--repeats 5] [--workdir bench-demo] [--config CONFIG] [--threads 1]

Runs the flow once on the demo (or on CONFIG), its stages reused when they are stored, then
times every file again `--repeats` times, side by side (pruneflow.tasks.stages.measure_latency.time_models, outside the
store), and prints one line per file: bytes, zip-deflated and xz sizes with their ratio to the
baseline .h5 (compressed alike), accuracy in the interpreter and agreement with the Keras model
(deterministic: measured once, by the flow), and the median over repeats of each repeat's median
batch-1 latency, with its min-max, and the speed-up against the baseline in the same format.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
from pathlib import Path

from common import demo_config, parse_args


def main() -> int:
    args = parse_args(__doc__, extra=lambda parser: (
        parser.add_argument("--config", type=Path, help="A run config instead of the demo's."),
        parser.add_argument("--threads", type=int, default=1, help="Interpreter threads."),
        parser.add_argument("--runs", type=int, default=200, help="Timed invocations per file and repeat."),
        parser.set_defaults(repeats=5),
    ))
    from pruneflow.flows.cli import run_settings
    from pruneflow.flows.prune import prune_flow
    from pruneflow.tasks.libs.timing import machine_description
    from pruneflow.tasks.specs.config import LatencySpec, load_config
    from pruneflow.tasks.specs.formats import FORMATS
    from pruneflow.tasks.stages.measure_latency import time_models

    config = load_config(args.config) if args.config else demo_config(args.workdir)
    with run_settings():
        summary = prune_flow(config)
    spec = LatencySpec(runs=args.runs, warmup=20, threads=args.threads)
    medians: dict[tuple[str, str], list[float]] = {}
    for i in range(args.repeats):
        report = time_models(
            Path(tempfile.mkdtemp(prefix="pruneflow-latency-")), _baseline_file(summary),
            summary.baseline_exports, _pruned_file(summary), summary.exports, config.dataset.shape, spec,
            machine_description(),
        )
        for timing in report.timings:
            medians.setdefault((timing.model, timing.format), []).append(timing.median_ms)
        print(f"repeat {i + 1}/{args.repeats} done", flush=True)

    def latency(model: str, fmt: str) -> float:
        return statistics.median(medians[model, fmt])

    print(f"\n{machine_description()}; {args.threads} interpreter thread(s); batch 1; {args.runs} runs a repeat, "
          f"{args.repeats} repeats; ratios are the baseline .h5's size over the file's, compressed alike.\n")
    header = (f"{'model':<9} {'format':<25} {'bytes':>9} {'ratio':>6} {'zip':>9} {'ratio':>6} {'xz':>9} {'ratio':>6} "
              f"{'accuracy':>8} {'agrees':>7} {'latency ms (min-max)':>26} {'speed-up':>8}")
    print(header)
    print("-" * len(header))
    for file in summary.deployables:
        times = medians[file.model, file.format]
        dense = latency("baseline", FORMATS[file.format].dense)
        spread = f"{statistics.median(times):.4f} ({min(times):.4f}-{max(times):.4f})"
        print(f"{file.model:<9} {FORMATS[file.format].display:<25} {file.raw_bytes:>9,} {file.raw_ratio:>5.2f}x "
              f"{file.zip_bytes:>9,} {file.zip_ratio:>5.2f}x {file.xz_bytes:>9,} {file.xz_ratio:>5.2f}x "
              f"{file.accuracy:>8.4f} {file.agreement:>7.2%} {spread:>26} {dense / statistics.median(times):>7.2f}x")
    print(f"\nBaseline test accuracy (Keras) {summary.baseline.accuracy:.4f}; pruned to "
          f"{summary.measured_sparsity:.4f} sparsity. {summary.latency.sparse_kernels}")
    return 0


def _baseline_file(summary):
    from pruneflow.tasks.libs.models import ModelFile

    return ModelFile.of(summary.config.model.baseline, trust_code=summary.config.model.trust_custom_code)


def _pruned_file(summary):
    from pruneflow.tasks.libs.models import ModelFile

    return ModelFile.of(summary.pruned_model, trust_code=True)


if __name__ == "__main__":
    sys.exit(main())
