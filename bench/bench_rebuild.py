"""Which stages an edit rebuilds: the demo run once, then again after each edit to a copy of the code.

    .venv/bin/python bench/bench_rebuild.py [--workdir bench-demo] [--code DIR] [--layout flat|namespace]

Each edit is a change of code (never a comment, which no key sees) that leaves every output
byte as it was: (a) a config field's description, (b) the command's clock, (c) the QAT stage's
code, (d) the int8 conversion's code. A stage is counted as rebuilt when the edited run stored
a new folder for it (a new key); the edit is undone before the next one, so each edit is
measured against the same stored run. The code runs from a copy (`--code`, this checkout by
default), so the checkout itself is never edited. `--layout flat` measures a checkout from
before pruneflow's namespace (top-level `tasks` and `flows`, e.g. a worktree of 7243d3a).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]

# (label, file, old text, new text) per layout: the same edit, where each layout keeps that code.
EDITS = {
    "namespace": [
        ("(a) a field's description", "tasks/specs/config.py", 'description="Epochs of fine-tuning under the pruning',
         'description="Epochs of fine-tuning, under the pruning'),
        ("(b) the command's clock", "flows/running.py", "round(time.perf_counter() - started, 3)",
         "round(time.perf_counter() - started, 4)"),
        ("(c) the QAT module", "tasks/stages/quantize_train.py", '"Quantization-aware training for %d epoch(s)',
         '"Quantization-aware training: %d epoch(s)'),
        ("(d) the int8 conversion", "tasks/libs/tflite.py", 'message="Statistics for quantized inputs were expected"',
         'message="Statistics for quantized inputs were expected.*"'),
    ],
    "flat": [
        ("(a) a field's description", "tasks/config.py", 'description="Epochs of fine-tuning under the pruning',
         'description="Epochs of fine-tuning, under the pruning'),
        ("(b) the command's clock", "tasks/stage.py", "round(time.perf_counter() - started, 3)",
         "round(time.perf_counter() - started, 4)"),
        ("(c) the QAT module", "tasks/qat.py", '"Quantization-aware training for %d epoch(s)',
         '"Quantization-aware training: %d epoch(s)'),
        ("(d) the int8 conversion", "tasks/export.py", 'message="Statistics for quantized inputs were expected"',
         'message="Statistics for quantized inputs were expected.*"'),
    ],
}

# How a process runs the copied code: the namespace layout maps the pruneflow package onto the
# copy's folders, the flat one puts the copy first on sys.path.
PRELUDE = {
    "namespace": (
        "import sys, types\n"
        "package = types.ModuleType('pruneflow'); package.__path__ = [sys.argv[1] + '/namespace']\n"
        "sys.modules['pruneflow'] = package\n"
        "from pruneflow.flows.cli import main\n"
    ),
    "flat": "import sys\nsys.path.insert(0, sys.argv[1])\nfrom flows.cli import main\n",
}


def run(code: Path, layout: str, config: Path) -> None:
    script = PRELUDE[layout] + "sys.exit(main(['run', sys.argv[2]]))\n"
    result = subprocess.run([sys.executable, "-c", script, str(code), str(config)], capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"the run failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")


def folders(artifacts: Path) -> dict[str, set[str]]:
    """Each stage's stored keys."""
    return {
        stage.name: {key.name for key in stage.iterdir()}
        for stage in sorted(artifacts.iterdir()) if stage.is_dir() and not stage.name.startswith(".")
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("bench-demo"))
    parser.add_argument("--code", type=Path, default=REPO, help="the checkout whose code is measured")
    parser.add_argument("--layout", choices=sorted(EDITS), default="namespace")
    args = parser.parse_args()
    python = Path(sys.executable)
    if subprocess.run([python, "-m", "pruneflow.flows.cli", "demo", "--workdir", str(args.workdir)],
                      capture_output=True).returncode != 0:
        sys.exit("the demo failed: run `make demo` to see why")
    with tempfile.TemporaryDirectory(prefix="pruneflow-rebuild-") as scratch:
        code = Path(scratch) / "code"
        for folder in ("tasks", "flows", "deployments"):
            shutil.copytree(args.code / folder, code / folder, ignore=shutil.ignore_patterns("__pycache__"))
        (code / "namespace").mkdir()
        for folder in ("tasks", "flows", "deployments"):
            (code / "namespace" / folder).symlink_to(code / folder)
        config = Path(scratch) / "run.yaml"
        text = (args.workdir / "pruneflow.yaml").read_text()
        base = (args.workdir / "pruneflow.yaml").resolve().parent
        config.write_text(text.replace("output_root: outputs", f"output_root: {Path(scratch) / 'outputs'}"))
        baseline = yaml.safe_load(text)["model"]["baseline"]  # baseline.keras since the demo trains with Keras 3
        for name in ("data", baseline):  # the demo's relative paths, from the config's folder
            (Path(scratch) / name).symlink_to(base / name)
        run(code, args.layout, config)
        stored = folders(Path(scratch) / "outputs" / "artifacts")
        print(f"{args.layout} layout ({args.code}): {len(stored)} stage kinds stored by the first run")
        for label, file, old, new in EDITS[args.layout]:
            path = code / file
            source = path.read_text()
            if old not in source:
                sys.exit(f"{file}: no {old!r} to edit")
            path.write_text(source.replace(old, new, 1))
            try:
                run(code, args.layout, config)
            finally:
                path.write_text(source)
            now = folders(Path(scratch) / "outputs" / "artifacts")
            rebuilt = [stage for stage in now if now[stage] - stored.get(stage, set())]
            print(f"  {label:<28} {len(rebuilt):>2} rebuilt: {', '.join(rebuilt) or 'none'}")
            stored = now
    return 0


if __name__ == "__main__":
    sys.exit(main())
