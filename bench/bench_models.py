"""Runs of the model shapes users bring, each through `pruneflow` as a user starts it, with its figures.

    .venv/bin/python bench/bench_models.py [--workdir bench-demo] [--cases sensitivity,demo_2_4,mobilenet]

- sensitivity: `pruneflow sensitivity` on the demo (MNIST, small CNN), --repeats times, each
  with a fresh output root (nothing cached but the demo's data and baseline); target: under
  a minute on 2 cores (run under `taskset -c 0,1`).
- demo_2_4: the demo pruned at 2:4 (layers.m_by_n [2, 4], the first convolution kept dense:
  it has one input channel).
- mobilenet: a 224x224x3 model, Rescaling then a keras.applications MobileNetV2 (alpha 0.35,
  weights=None) nested in a Sequential with a new head, trained briefly on 600 of the demo's
  digits (a random sample, decoded as RGB, resized to 224), then pruned to 0.7 by `pruneflow run`.

Each case prints the wall time of the command, accuracy, each group's share of the weights and
the pruned tensors' sparsity, and the deployable files' sizes.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import yaml
from common import demo_config, median_range, parse_args

PRUNEFLOW = str(Path(sys.executable).parent / "pruneflow")
SUBSET = {"train": 600, "val": 150, "test": 150}  # a random sample of each split (the demo's rows are in class order)


def timed_command(*args: str) -> tuple[float, str]:
    started = time.perf_counter()
    done = subprocess.run([PRUNEFLOW, *args], capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"pruneflow {' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return seconds, done.stdout


def write_config(data: dict, path: Path) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def print_run(name: str, seconds: float, out: str) -> None:
    summary = json.loads(Path(out.split("Summary: ")[1].split()[0]).read_text())
    sanity = summary["sanity"]
    print(f"\n== {name}: `pruneflow run` {seconds:.1f} s wall")
    print(f"test accuracy: baseline {summary['baseline']['accuracy']:.4f}, pruned {summary['pruned']['accuracy']:.4f}")
    pruned = sanity["tensors"]
    zeros, size = sum(t["zeros"] for t in pruned), sum(t["size"] for t in pruned)
    groups = {"pruned": size}
    for tensor in sanity["dense"]:
        groups[tensor["group"]] = groups.get(tensor["group"], 0) + tensor["size"]
    total = sum(groups.values())
    print(f"weights: {total:,}; " + ", ".join(f"{g} {n:,} ({n / total:.1%})" for g, n in groups.items()))
    print(f"pruned tensors: {len(pruned)}, sparsity {zeros / size:.4f}"
          + (f", structure {sanity['structure']}, violations {sum(t['structure_violations'] for t in pruned)}"
             if sanity["structure"] else ""))
    counts: dict[str, dict[str, int]] = {}
    for layer in sanity["layers"]:
        if layer["group"] != "pruned":
            counts.setdefault(layer["group"], {}).setdefault(layer["kind"], 0)
            counts[layer["group"]][layer["kind"]] += 1
    for group, kinds in counts.items():
        print(f"layers {group}: {', '.join(f'{kind} x{n}' for kind, n in sorted(kinds.items()))}")
    for file in summary["deployables"]:
        print(f"  {file['model']:<8} {file['format']:<16} {file['raw_bytes']:>10,} B  zip {file['zip_bytes']:>10,} B "
              f"({file['zip_ratio']:.2f}x)  accuracy {file['accuracy']:.4f}  latency {file['latency_median_ms']:.3f} ms "
              f"({file['speedup']:.2f}x)")
    print(f"stage seconds: {', '.join(f'{k} {v:.1f}' for k, v in summary['stage_seconds'].items())}")


def sensitivity(workdir: Path, repeats: int) -> None:
    base = yaml.safe_load((workdir / "pruneflow.yaml").read_text())
    walls = []
    for repeat in range(repeats):
        with tempfile.TemporaryDirectory(prefix="pruneflow-bench-") as root:
            config = write_config({**base, "output_root": root}, workdir / "bench-sensitivity.yaml")
            seconds, out = timed_command("sensitivity", str(config))
            walls.append(seconds)
            print(f"repeat {repeat + 1}/{repeats}: {seconds:.1f} s")
    print(f"\n== sensitivity: `pruneflow sensitivity` on the demo, seconds (median, min-max): {median_range(walls)}; "
          f"target < 60 s on 2 cores")
    print(out[out.index("Validation accuracy lost"):out.index("Table:")])


def demo_2_4(workdir: Path) -> None:
    base = yaml.safe_load((workdir / "pruneflow.yaml").read_text())
    pruning = {**base["pruning"], "initial_sparsity": 0.0, "final_sparsity": 0.5}
    config = write_config({**base, "pruning": pruning, "layers": {"m_by_n": [2, 4], "keep_first_conv": True}},
                          workdir / "bench-2-4.yaml")
    print_run("demo at 2:4", *timed_command("run", str(config)))


def mobilenet_config(workdir: Path, subset: dict[str, int] = SUBSET, name: str = "mobilenet") -> Path:
    """The MobileNetV2 case's config under workdir/<name>: its data (a sample of `subset` of the
    demo's digits per split) written and its baseline trained, once."""
    from pruneflow.tasks.core.runtime import keras
    from pruneflow.tasks.demo import train_baseline
    from pruneflow.tasks.specs.config import load_config

    folder = workdir / name
    data = folder / "data"
    if not data.exists():
        data.mkdir(parents=True)
        for split, n in subset.items():
            frame = pd.read_csv(workdir / "data" / f"{split}.csv").sample(n, random_state=0).sort_index()
            frame.assign(filename=[str((workdir / "data" / f).resolve()) for f in frame.filename]).to_csv(
                data / f"{split}.csv", index=False)
    config_data = {
        "dataset": {"train_csv": "data/train.csv", "val_csv": "data/val.csv", "test_csv": "data/test.csv",
                    "image_height": 224, "image_width": 224, "channels": 3, "batch_size": 32},
        "model": {"baseline": "baseline.h5"},
        "pruning": {"kind": "polynomial_decay", "initial_sparsity": 0.3, "final_sparsity": 0.7, "frequency": 2},
        "training": {"epochs": 3, "learning_rate": 5e-4},
        "layers": {"keep_first_conv": True},
        "output_root": "outputs",
        "export": {"representative_images": 50, "latency_runs": 50, "latency_warmup": 5},
    }
    config_path = write_config(config_data, folder / "pruneflow.yaml")
    config = load_config(config_path)
    if not config.model.baseline.exists():
        def build():
            backbone = keras.applications.MobileNetV2(
                input_shape=(224, 224, 3), alpha=0.35, include_top=False, weights=None
            )
            for layer in backbone.layers:  # BatchNorm statistics that settle within a brief training
                if isinstance(layer, keras.layers.BatchNormalization):
                    layer.momentum = 0.9
            return keras.Sequential([
                keras.Input((224, 224, 3)), keras.layers.Rescaling(2.0, offset=-1.0, name="to_signed"), backbone,
                keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(10, activation="softmax", name="digits"),
            ])

        started = time.perf_counter()
        train_baseline(config, epochs=6, out_path=config.model.baseline, build_model=build, library="tf_keras")
        print(f"baseline trained in {time.perf_counter() - started:.1f} s")
    return config_path


def mobilenet(workdir: Path) -> None:
    print_run("Rescaling + MobileNetV2 0.35 at 224x224x3", *timed_command("run", str(mobilenet_config(workdir))))


def main() -> int:
    args = parse_args(__doc__, lambda p: p.add_argument("--cases", default="sensitivity,demo_2_4,mobilenet"))
    demo_config(args.workdir)
    cases = {"sensitivity": lambda: sensitivity(args.workdir, args.repeats), "demo_2_4": lambda: demo_2_4(args.workdir),
             "mobilenet": lambda: mobilenet(args.workdir)}
    for name in args.cases.split(","):
        cases[name]()
    return 0


if __name__ == "__main__":
    sys.exit(main())
