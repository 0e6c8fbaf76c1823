"""What the benchmarks share: their arguments, the demo set-up, and how figures are printed."""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def parse_args(doc: str, extra=None) -> argparse.Namespace:
    """--repeats and --workdir, and what `extra(parser)` adds."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=Path("bench-demo"))
    if extra is not None:
        extra(parser)
    return parser.parse_args()


def demo_config(workdir: Path):
    """Run `pruneflow demo` once (data, baseline, and a warm-up of TensorFlow and Prefect's
    ephemeral server), then return the demo's config."""
    from pruneflow.flows.cli import main as cli_main
    from pruneflow.tasks.specs.config import load_config

    if cli_main(["demo", "--workdir", str(workdir)]) != 0:
        sys.exit("the demo failed; see above")
    return load_config(workdir / "pruneflow.yaml")


def median_range(values: list[float]) -> str:
    return f"{statistics.median(values):7.2f}  ({min(values):.2f}-{max(values):.2f})"
