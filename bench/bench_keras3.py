"""Benchmark: translating a Keras 3 model into tf_keras, and handing the weights back, at 224x224.

    .venv/bin/python bench/bench_keras3.py [--repeats 5] [--models MobileNetV3Small,EfficientNetB0]
    .venv/bin/python bench/bench_keras3.py --end-to-end [--models MobileNetV2,...] [--workdir bench-keras3]

--end-to-end instead prunes each backbone whole: a Keras 3 classifier (the keras.applications
backbone, weights=None, nested in a functional model with a Dense head, 32x32 RGB images of two
learnable classes), trained 2 epochs and saved as .keras by Keras 3, then `pruneflow run` on it
(constant 0.5, 2 epochs, int8): prints the translation's check, the sanity check, each file's
accuracy, the Keras 3 file handed back and the run's seconds.

Each model (keras.applications, weights=None, 1,000 classes) is built and saved as .keras by Keras 3
in a child process of its own; the child loads it (pruneflow.tasks.libs.keras3.load_keras3), then
`--repeats` times translates it (translate: the graph rebuilt in tf_keras, the weights copied) and
hands the weights back (hand_back onto a freshly loaded Keras 3 model), checking the outputs of
each on two images. Printed per model: the median and min-max of each step's seconds, and the
child's peak resident memory (ru_maxrss, TensorFlow included) with its resident memory before the
first translation. Target (issue 24): translation under 5 s on 2 cores.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from common import parse_args

CHILD = r"""
import json, resource, sys, time
from pathlib import Path
import numpy as np
from pruneflow.tasks.core.runtime import keras_3
from pruneflow.tasks.libs import keras3

name, folder, repeats = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
keras = keras_3()
model = getattr(keras.applications, name)(input_shape=(224, 224, 3), weights=None)
path = folder / f"{name}.keras"
model.save(path)
del model
original = keras3.load_keras3(path)
images = np.random.default_rng(0).uniform(0, 1, (2, 224, 224, 3)).astype("float32")
rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
translate, hand_back = [], []
for _ in range(repeats):
    started = time.perf_counter()
    translated = keras3.translate(original, path)
    translate.append(time.perf_counter() - started)
    keras3.compare_outputs(original, translated, images, path)
    target = keras3.load_keras3(path)
    started = time.perf_counter()
    handed = keras3.hand_back(translated, target)
    hand_back.append(time.perf_counter() - started)
    keras3.compare_outputs(handed, translated, images, path, handing_back=True)
print(json.dumps({"translate": translate, "hand_back": hand_back, "params": original.count_params(),
                  "layers": len(original.layers), "rss_before_kb": rss_before,
                  "peak_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""


APPLICATIONS = "MobileNetV2,MobileNetV3Small,MobileNetV3Large,EfficientNetB0,ResNet50"


def end_to_end(names: list[str], workdir: Path) -> int:
    """Each backbone pruned by a whole run; one line of figures per backbone."""
    import time

    from pruneflow.flows.cli import run_settings
    from pruneflow.flows.prune import prune_flow
    from pruneflow.tasks.core.runtime import keras_3
    from pruneflow.tasks.demo import train_baseline
    from pruneflow.tasks.specs.config import parse_config
    from pruneflow.tasks.specs.formats import KERAS3

    from tests.helpers import data  # the repository is on sys.path (common.py)

    images = workdir / "data"
    if not images.exists():
        data.write_tiny_dataset(images, size=32)  # the applications take 32x32 at least
    keras = keras_3()
    print(f"{'backbone':<18} {'translated':>10} {'tensors':>7} {'sparsity':>8} {'keras acc':>9} {'int8 acc':>8} "
          f"{'keras3 acc':>10} {'keras3 zeros ok':>15} {'run s':>6}")
    for name in names:
        def build(name=name):
            inputs = keras.Input((32, 32, 3))
            backbone = getattr(keras.applications, name)(input_shape=(32, 32, 3), weights=None, include_top=False,
                                                         pooling="avg")
            return keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(backbone(inputs)))

        config_dict = data.make_config_dict(images, workdir / f"{name}.keras", workdir / f"outputs-{name}")
        config_dict["dataset"]["image_height"] = config_dict["dataset"]["image_width"] = 32
        config = parse_config(config_dict)
        if not config.model.baseline.exists():
            train_baseline(config, epochs=2, out_path=config.model.baseline, build_model=build)
        started = time.perf_counter()
        with run_settings():
            summary = prune_flow(config)
        seconds = time.perf_counter() - started
        files = {(f.model, f.format): f for f in summary.deployables}
        handed = [t for e in summary.exports for f in e.files if f.format == KERAS3 for t in f.sparsity]
        print(f"{name:<18} {'yes':>10} {len(summary.sanity.tensors):>7} {summary.measured_sparsity:>8.4f} "
              f"{summary.pruned.accuracy:>9.4f} {files['pruned', 'int8'].accuracy:>8.4f} "
              f"{files['pruned', KERAS3].accuracy:>10.4f} {str(all(t.passed for t in handed)) + f' ({len(handed)})':>15} "
              f"{seconds:>6.0f}", flush=True)
    return 0


def main() -> int:
    args = parse_args(__doc__, extra=lambda parser: (
        parser.add_argument("--models", default=None),
        parser.add_argument("--end-to-end", action="store_true"),
        parser.set_defaults(repeats=5, workdir=Path("bench-keras3")),
    ))
    if args.end_to_end:
        return end_to_end((args.models or APPLICATIONS).split(","), args.workdir)
    args.models = args.models or "MobileNetV3Small,EfficientNetB0"
    from pruneflow.tasks.libs.timing import machine_description

    print(f"{machine_description()}; {args.repeats} repeats per model, each in one child process\n")
    header = f"{'model':<18} {'params':>10} {'layers':>6} {'translate s (min-max)':>24} {'hand back s (min-max)':>24} {'peak RSS MB':>11}"
    print(header)
    print("-" * len(header))
    for name in args.models.split(","):
        with tempfile.TemporaryDirectory(prefix="pruneflow-bench-keras3-") as folder:
            done = subprocess.run(
                [sys.executable, "-c", CHILD, name, folder, str(args.repeats)], capture_output=True, text=True,
                env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
            )
        if done.returncode != 0:
            print(f"{name}: failed\n{done.stderr[-3000:]}")
            return 1
        figures = json.loads(done.stdout.strip().splitlines()[-1])

        def spread(values: list[float]) -> str:
            return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"

        print(f"{name:<18} {figures['params']:>10,} {figures['layers']:>6} {spread(figures['translate']):>24} "
              f"{spread(figures['hand_back']):>24} {figures['peak_rss_kb'] / 1024:>11.0f}"
              f"   (before translating: {figures['rss_before_kb'] / 1024:.0f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
