"""Channel pruning measured: the rebuilt model's parameters, FLOPs, accuracy and latency in every
format against the baseline's, each case one `pruneflow run` as a user starts it.

    .venv/bin/python bench/bench_channels.py [--workdir bench-demo] [--cases demo,mobilenet]

- demo: the demo (MNIST, small CNN, a Keras 3 baseline) with `channel_pruning: {fraction: 0.5}`,
  then its schedule to 0.8 sparsity and every format. Targets: the int8 file at least 15x
  smaller zip-deflated than the baseline .h5 within 1 point of its accuracy; the float32 TFLite
  file at least 1.5x faster than the baseline's at batch 32.
- mobilenet: bench_models.py's nested MobileNetV2 (alpha 0.35, 224x224x3) with
  `channel_pruning: {fraction: 0.3, round_to: 8}` and its 0.7 schedule over 6 epochs. First, on the baseline
  itself, the channels the plan removes are zeroed and the model rebuilt without them: the
  outputs must not change (the residual groups respected). Then the rebuilt model's float32
  TFLite latency at batch 1 for round_to 1, 4, 8 and 16, against the baseline's (channel tiles:
  XNNPACK pads a layer's channels to its kernel's tile). Target: the float32 TFLite file at
  least 1.3x faster than the baseline's at batch 1.

Latency: medians of alternating runs (export.latency_runs at batch 1, latency_batch_runs at 32),
each file in its runtime on 1 thread; speed-up is the baseline's file in the same format over
the pruned one's.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import yaml
from bench_models import mobilenet_config, timed_command, write_config
from common import demo_config, parse_args


def print_channels(name: str, seconds: float, out: str) -> dict:
    summary = json.loads(Path(out.split("Summary: ")[1].split()[0]).read_text())
    channels = summary["channels"]
    totals = {field: [sum(cost[field] for cost in channels[side]) for side in ("before", "after")]
              for field in ("params", "flops")}
    print(f"\n== {name}: `pruneflow run` {seconds:.1f} s wall")
    print(f"parameters {totals['params'][0]:,} -> {totals['params'][1]:,} ({channels['params_ratio']:.2f}x); "
          f"FLOPs per image {totals['flops'][0]:,} -> {totals['flops'][1]:,} ({channels['flops_ratio']:.2f}x)")
    groups = channels["plan"]["groups"]
    pruned = [g for g in groups if len(g["kept"]) < g["channels"]]
    print(f"channel groups: {len(pruned)} pruned, {len(groups) - len(pruned)} left whole; "
          f"test accuracy: baseline {summary['baseline']['accuracy']:.4f}, pruned {summary['pruned']['accuracy']:.4f}")
    print(f"{'model':<8} {'format':<16} {'zip bytes':>10} {'zip x':>6} {'accuracy':>8} {'b1 ms':>8} {'b1 x':>6} "
          f"{'b32 ms':>8} {'b32 x':>6} {'FLOPs':>6}")
    for f in summary["deployables"]:
        b32 = f"{f['batch_median_ms']:8.3f} {f['batch_speedup']:5.2f}x" if f["batch_median_ms"] else f"{'-':>8} {'-':>6}"
        print(f"{f['model']:<8} {f['format']:<16} {f['zip_bytes']:>10,} {f['zip_ratio']:5.2f}x {f['accuracy']:8.4f} "
              f"{f['latency_median_ms']:8.3f} {f['speedup']:5.2f}x {b32} {f['flops_ratio']:5.2f}x")
    return summary


def deployable(summary: dict, model: str, fmt: str) -> dict:
    return next(f for f in summary["deployables"] if f["model"] == model and f["format"] == fmt)


def demo(workdir: Path) -> None:
    base = yaml.safe_load((workdir / "pruneflow.yaml").read_text())
    config = write_config({**base, "channel_pruning": {"fraction": 0.5}}, workdir / "bench-channels.yaml")
    summary = print_channels("demo, channels 0.5 then sparsity 0.8", *timed_command("run", str(config)))
    h5 = deployable(summary, "baseline", "keras_h5")
    for fmt in ("int8", "int8_qat"):
        file = deployable(summary, "pruned", fmt)
        print(f"target: {fmt} {file['zip_ratio']:.2f}x smaller zip-deflated than the baseline .h5 (>= 15x), accuracy "
              f"{100 * (file['accuracy'] - h5['accuracy']):+.2f} points (within 1)")
    float32 = deployable(summary, "pruned", "float32")
    print(f"target: float32 TFLite {float32['batch_speedup']:.2f}x faster than the baseline's at batch 32 (>= 1.5x); "
          f"{float32['speedup']:.2f}x at batch 1")


def zeroed_outputs_unchanged(config_path: Path, fraction: float) -> float:
    """The largest output change when the plan's channels, zeroed in the baseline, are removed."""
    from pruneflow.tasks.libs.channels import plan_channels, rebuild, trace_channels, zero_removed
    from pruneflow.tasks.libs.models import load_model
    from pruneflow.tasks.specs.config import load_config

    config = load_config(config_path)
    model = load_model(config.model.baseline)
    tracing = trace_channels(model)
    plan = plan_channels(model, tracing, fraction=fraction, selection=config.layers, round_to=8)
    zero_removed(tracing, plan)
    rebuilt = rebuild(model, tracing, plan)
    images = np.random.default_rng(0).uniform(0, 1, (8, 224, 224, 3)).astype("float32")
    change = float(np.max(np.abs(rebuilt(images, training=False).numpy() - model(images, training=False).numpy())))
    joined = [g for g in plan.groups if len(g.layers) > 1]
    print(f"\nMobileNetV2 baseline, fraction {fraction}: {len(plan.pruned)} groups pruned ({len(joined)} joining "
          f"several layers: the residual blocks), {len(plan.whole)} left whole; outputs with the removed channels "
          f"zeroed vs rebuilt without them: largest change {change:.2e}")
    return change


def tile_latency(config_path: Path, fraction: float, tiles: tuple[int, ...] = (1, 4, 8, 16)) -> None:
    """The baseline rebuilt at `fraction` for each round_to, float32 TFLite at batch 1 on one thread,
    timed side by side with the baseline's file: no training, so only the channel counts differ."""
    import tempfile

    from pruneflow.tasks.libs import litert, tflite
    from pruneflow.tasks.libs.channels import layer_costs, plan_channels, rebuild, trace_channels
    from pruneflow.tasks.libs.models import load_model
    from pruneflow.tasks.libs.timing import time_side_by_side
    from pruneflow.tasks.specs.config import load_config
    from pruneflow.tasks.specs.formats import FORMATS

    config = load_config(config_path)
    model = load_model(config.model.baseline)
    image = np.random.default_rng(0).uniform(0, 1, (1, 224, 224, 3)).astype("float32")
    folder = Path(tempfile.mkdtemp(prefix="tiles-"))

    def timed(name: str, keras_model):
        path = folder / f"{name}.tflite"
        path.write_bytes(tflite.convert(keras_model, FORMATS["float32"], config.export, None))
        return litert.timed_call(path, image, threads=1)

    flops = {"baseline": sum(c.flops for c in layer_costs(model))}
    calls = {("baseline", "float32"): timed("baseline", model)}
    for tile in tiles:
        tracing = trace_channels(model)
        plan = plan_channels(model, tracing, fraction=fraction, selection=config.layers, round_to=tile)
        rebuilt = rebuild(model, tracing, plan)
        flops[f"round_to {tile}"] = sum(c.flops for c in layer_costs(rebuilt))
        calls[("pruned", f"round_to {tile}")] = timed(f"round_to_{tile}", rebuilt)
    timings = time_side_by_side(calls, config.latency_spec.model_copy(update={"runs": 200}))
    base = timings[0].median_ms
    print(f"\nMobileNetV2 baseline rebuilt at fraction {fraction}, float32 TFLite, batch 1, 1 thread, 200 runs each:")
    print(f"{'channels':<12} {'FLOPs x':>8} {'median ms':>10} {'p90 ms':>8} {'speed-up':>9}")
    for t in timings:
        print(f"{t.format if t.model == 'pruned' else 'baseline':<12} {flops[t.format if t.model == 'pruned' else 'baseline'] / flops['baseline']:8.3f} "
              f"{t.median_ms:10.3f} {t.p90_ms:8.3f} {base / t.median_ms:8.2f}x")


def mobilenet(workdir: Path) -> None:
    config_path = mobilenet_config(workdir)
    zeroed_outputs_unchanged(config_path, 0.3)
    tile_latency(config_path, 0.3)
    base = yaml.safe_load(config_path.read_text())
    # Six epochs, not the sparsity case's three: 30% of the channels removed at once takes longer to recover.
    config = write_config({**base, "channel_pruning": {"fraction": 0.3, "round_to": 8},
                           "training": {**base["training"], "epochs": 6}}, config_path.with_name("channels.yaml"))
    summary = print_channels("MobileNetV2 0.35 224x224, channels 0.3 (round_to 8) then sparsity 0.7", *timed_command("run", str(config)))
    float32 = deployable(summary, "pruned", "float32")
    print(f"target: float32 TFLite {float32['speedup']:.2f}x faster than the baseline's at batch 1 (>= 1.3x); "
          f"{float32['batch_speedup']:.2f}x at batch 32")


def main() -> int:
    args = parse_args(__doc__, lambda p: p.add_argument("--cases", default="demo,mobilenet"))
    demo_config(args.workdir)
    cases = {"demo": lambda: demo(args.workdir), "mobilenet": lambda: mobilenet(args.workdir)}
    for name in args.cases.split(","):
        cases[name]()
    return 0


if __name__ == "__main__":
    sys.exit(main())
