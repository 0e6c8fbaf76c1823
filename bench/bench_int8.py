"""int8 that keeps the accuracy, measured: the per-layer error table and the float fallback on
bench_models.py's nested MobileNetV2 (alpha 0.35, 224x224x3), one `pruneflow run` as a user starts it.

    .venv/bin/python bench/bench_int8.py [--workdir bench-demo]

The MobileNetV2 baseline is trained on 600 of the demo's digits, validated and tested on 500
each (its own folder, workdir/mobilenet-500), pruned to 0.7 as in bench_models.py, and exported
as int8, int8_fallback (export.float_fallback auto, within export.fallback_max_loss 0.5 points on the
validation split) and int16x8. Target: the int8_fallback file within 1 point of the Keras pruned
model's test accuracy in the runtime, at least 3x smaller zip-deflated than the baseline .h5,
the layers it keeps float named in the per-layer table.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml
from bench_models import mobilenet_config, timed_command, write_config
from common import demo_config, parse_args

SPLITS = {"train": 600, "val": 500, "test": 500}  # 500 validation images: 0.5 points is 2.5 of them


def main() -> int:
    args = parse_args(__doc__)
    demo_config(args.workdir)
    config_path = mobilenet_config(args.workdir, SPLITS, "mobilenet-500")
    base = yaml.safe_load(config_path.read_text())
    # Batch 1 only: int16x8 runs on LiteRT's built-in kernels, 2 s a batch of 32 at 224x224.
    export = {**base["export"], "formats": ["int8", "int8_fallback", "int16x8"], "float_fallback": "auto",
              "latency_batch": 1}
    config = write_config({**base, "export": export}, config_path.with_name("int8.yaml"))
    seconds, out = timed_command("run", str(config))
    summary = json.loads(Path(out.split("Summary: ")[1].split()[0]).read_text())
    errors = summary["quantization_errors"]
    print(f"\n== MobileNetV2 0.35 224x224, sparsity 0.7, int8 formats: `pruneflow run` {seconds:.1f} s wall")
    fallback = next(f["fallback"] for e in summary["exports"] for f in e["files"] if f["format"] == "int8_fallback")
    print(f"int8 error by layer on {errors['images']} validation images, the worst 10 of {len(errors['layers'])} ops "
          "and those int8_fallback keeps in float (rank by own error):")
    print(f"{'rank':>4} {'layer':<52} {'op':<18} {'RMSE/spread':>11} {'cosine':>8}  int8_fallback")
    for rank, e in enumerate(errors["layers"], 1):
        if rank <= 10 or e["tensor"] in fallback["tensors"]:
            kept = "float" if e["tensor"] in fallback["tensors"] else ""
            print(f"{rank:4d} {e['layer']:<52} {e['op']:<18} {e['rmse']:11.4f} {e['cosine']:8.4f}  {kept}")
    print(f"int8_fallback keeps {len(fallback['layers'])} layer(s) in float ({fallback['rule']}): "
          f"{', '.join(fallback['layers']) or 'none'}; validation accuracy {fallback['accuracy']:.4f}, "
          f"the Keras model's {fallback['reference']:.4f}" + ("" if fallback["reached"] else " (not within the loss)"))
    keras = summary["pruned"]["accuracy"]
    print(f"test accuracy ({summary['pruned']['examples']} images): baseline {summary['baseline']['accuracy']:.4f}, "
          f"pruned Keras {keras:.4f}")
    print(f"{'model':<8} {'format':<14} {'zip bytes':>10} {'zip x':>7} {'accuracy':>8} {'vs Keras':>9} {'b1 ms':>7}")
    for f in summary["deployables"]:
        print(f"{f['model']:<8} {f['format']:<14} {f['zip_bytes']:>10,} {f['zip_ratio']:6.2f}x {f['accuracy']:8.4f} "
              f"{100 * (f['accuracy'] - keras):+8.2f}p {f['latency_median_ms']:7.3f}")
    file = next(f for f in summary["deployables"] if f["model"] == "pruned" and f["format"] == "int8_fallback")
    print(f"target: int8_fallback {100 * (file['accuracy'] - keras):+.2f} points against the Keras pruned model "
          f"(within 1), {file['zip_ratio']:.2f}x smaller zip-deflated than the baseline .h5 (>= 3x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
