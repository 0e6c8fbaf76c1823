"""Batch-1 latency measured side by side: the machine it depends on, the call that times a Keras
model, the turns the calls take, and whether XNNPACK's sparse kernels can apply to a model."""

import dataclasses
import os
import platform
import time
from collections.abc import Callable

import numpy as np

from pruneflow.tasks.libs.artifacts import ExportedModels, Timing
from pruneflow.tasks.specs.config import LatencySpec
from pruneflow.tasks.specs.formats import FORMATS

SPARSE_SHARE = 2 / 3  # XNNPACK runs 1x1 convolutions sparse only when at least this share of their weights is zero
INPUT_SEED = 0


ROUND = 10  # invocations of one model before the next one's turn


def available_cpus() -> int:
    """CPUs this process may run on (a container's or a worker's share, not the machine's)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def machine_description() -> str:
    """What latency depends on, besides the model: the processor, its core count, the OS."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            model = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), model)
    except OSError:
        pass
    return f"{model}, {available_cpus()} cores, {platform.system()} {platform.machine()}"


@dataclasses.dataclass(frozen=True)
class Invocation:
    """One call to time, and what the report should say of how it ran ("" when as usual)."""

    call: Callable[[], object]
    note: str = ""

    def __call__(self) -> object:
        return self.call()


def keras_call(model, image: np.ndarray) -> Callable[[], object]:
    from pruneflow.tasks.core.runtime import tf

    predict = tf.function(lambda batch: model(batch, training=False))
    batch = tf.constant(image)
    return lambda: predict(batch).numpy()


def time_side_by_side(
    calls: dict[tuple[str, str], Callable], spec: LatencySpec, batch: int = 1, runs: int | None = None
) -> list[Timing]:
    """Warm each call up, then time them in turns of ROUND invocations until each has `runs`
    (spec.runs by default); each call runs on `batch` images."""
    runs = spec.runs if runs is None else runs
    for call in calls.values():
        for _ in range(spec.warmup):
            call()
    seconds = {name: [] for name in calls}
    while any(len(times) < runs for times in seconds.values()):
        for name, call in calls.items():
            for _ in range(min(ROUND, runs - len(seconds[name]))):
                started = time.perf_counter()
                call()
                seconds[name].append(time.perf_counter() - started)
    return [
        Timing(model=model, format=fmt, median_ms=float(np.median(times) * 1e3),
               p90_ms=float(np.percentile(times, 90) * 1e3), runs=len(times), batch=batch)
        for (model, fmt), times in seconds.items()
    ]


def one_by_one_kernels(model) -> list[np.ndarray]:
    """The kernels of the model's 1x1 Conv2D layers (nested models' too)."""
    from pruneflow.tasks.core.runtime import keras

    found = []
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            found += one_by_one_kernels(layer)
        elif type(layer) is keras.layers.Conv2D and tuple(layer.kernel_size) == (1, 1):
            found.append(layer.kernel.numpy())
    return found


def sparse_kernels_note(model, exports: list[ExportedModels]) -> str:
    """Whether XNNPACK's sparse kernels can apply to this model, and if not, why."""
    from pruneflow.tasks.core.runtime import tfmot

    kernels = one_by_one_kernels(model)
    if not kernels:
        return "XNNPACK's sparse kernels cannot apply: they run 1x1 convolutions only, and this model has none."
    share = sum(k.size - np.count_nonzero(k) for k in kernels) / sum(k.size for k in kernels)
    if share < SPARSE_SHARE:
        return (
            f"XNNPACK's sparse kernels cannot apply: the model's 1x1 convolutions hold {share:.0%} zeros, "
            f"under the {SPARSE_SHARE:.0%} they need."
        )
    try:
        tfmot.sparsity.keras.PruneForLatencyOnXNNPack().ensure_model_supports_pruning(model)
    except (ValueError, TypeError, AttributeError) as reason:  # TFMOT's refusal, or a shape it cannot walk
        return (
            f"XNNPACK's sparse kernels cannot apply: {reason}. Their subgraph starts with a 3x3 stride-2 convolution "
            "of 3 channels after a ZeroPadding2D and ends with a global average pooling, as in MobileNet."
        )
    files = [file for exported in exports for file in exported.files]
    sparse = [f.format for f in files if FORMATS[f.format].sparse and not FORMATS[f.format].int8]
    if not sparse:
        return "XNNPACK's sparse kernels could apply to this model in a float format stored sparse, which was not exported."
    return (
        f"XNNPACK's sparse kernels can apply to the {sparse[0]} file (its 1x1 convolutions hold {share:.0%} zeros, "
        "in a MobileNet-like graph); whether a delegate uses them depends on how TFLite was built: compare its "
        f"latency with {FORMATS[sparse[0]].dense}'s."
    )
