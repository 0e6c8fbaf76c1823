"""The measure_latency stage: batch-1 latency of the baseline and the pruned model, as Keras
models and as each exported file, measured side by side.

Each file runs in its format's runtime (pruneflow.tasks.libs.runtimes: LiteRT for a TFLite file,
with its default delegate, XNNPACK) on a fixed number of threads; each Keras model, for reference, as a tf.function on TensorFlow's own
threads. After `warmup` untimed invocations of each, the models take turns, ROUND invocations
at a time, until each has `runs` timed ones: a machine that slows down for a while slows all
of them alike. Nothing is assumed about speed: the report shows the ratios of what was
measured, and says whether XNNPACK's sparse kernels could have applied at all.

Latency depends on the machine: the machine's description is an input, so a stored latency
is reused on the same kind of machine only.
"""

from pathlib import Path

import numpy as np

from pruneflow.tasks.core.files import write_json
from pruneflow.tasks.core.stage import Stage
from pruneflow.tasks.libs.artifacts import ExportedModels, LatencyReport
from pruneflow.tasks.libs.models import ModelFile
from pruneflow.tasks.libs.runtimes import RUNTIMES, runtime_packages
from pruneflow.tasks.libs.timing import INPUT_SEED, Invocation, keras_call, sparse_kernels_note, time_side_by_side
from pruneflow.tasks.specs.config import ImageShape, LatencySpec
from pruneflow.tasks.specs.formats import FORMATS, KERAS


def time_models(
    out: Path, baseline: ModelFile, baseline_exports: list[ExportedModels], pruned: ModelFile,
    pruned_exports: list[ExportedModels], shape: ImageShape, latency: LatencySpec, machine: str,
) -> LatencyReport:
    """Batch-1 latency of both Keras models and of each of their exported files, each in its
    format's runtime, on one fixed image."""
    from pruneflow.tasks.core.runtime import keras

    keras.backend.clear_session()
    image = np.random.default_rng(INPUT_SEED).random((1, shape.height, shape.width, shape.channels), dtype=np.float32)
    models = {"baseline": (baseline.load(), baseline_exports), "pruned": (pruned.load(), pruned_exports)}
    calls = {}
    for name, (keras_model, exports) in models.items():
        calls[name, KERAS] = Invocation(keras_call(keras_model, image))
        for exported in exports:
            for file in exported.files:
                runtime = RUNTIMES[FORMATS[file.format].runtime]
                calls[name, file.format] = runtime.batch1(exported.path(file), image, latency.threads)
    report = LatencyReport(
        folder=out, machine=machine, threads=latency.threads, timings=time_side_by_side(calls, latency),
        sparse_kernels=sparse_kernels_note(models["pruned"][0], pruned_exports),
        notes=[f"{model}: {call.note}" for (model, _), call in calls.items() if call.note],
    )
    write_json(out / "latency.json", report.model_dump(mode="json", exclude={"folder", "digest"}))
    return report


def describe(report: LatencyReport) -> str:
    return ", ".join(f"{t.model} {t.format} {t.median_ms:.3f} ms" for t in report.timings) + " (medians, batch 1)"


measure_latency = Stage("measure_latency", time_models, describe=describe, packages=runtime_packages())
