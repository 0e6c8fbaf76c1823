"""The measure_latency stage: latency of the baseline and the pruned model, as Keras models and as
each exported file, measured side by side at batch 1 and at the config's larger batch.

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

from pruneflow.tasks.core.errors import PruneflowError
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
    """Latency of both Keras models and of each of their exported files, each in its format's
    runtime, on fixed images: one, then `latency.batch` (a file whose batch is fixed is noted)."""
    from pruneflow.tasks.core.runtime import keras

    keras.backend.clear_session()
    models = {"baseline": (baseline.load(), baseline_exports), "pruned": (pruned.load(), pruned_exports)}
    timings, notes = [], []
    for batch, runs in ((1, latency.runs), (latency.batch, latency.batch_runs)) if latency.batch > 1 else ((1, latency.runs),):
        images = np.random.default_rng(INPUT_SEED).random(
            (batch, shape.height, shape.width, shape.channels), dtype=np.float32
        )
        calls = {}
        for name, (keras_model, exports) in models.items():
            calls[name, KERAS] = Invocation(keras_call(keras_model, images))
            for exported in exports:
                for file in exported.files:
                    runtime = RUNTIMES[FORMATS[file.format].runtime]
                    try:
                        calls[name, file.format] = runtime.timed(exported.path(file), images, latency.threads)
                    except PruneflowError as fixed:
                        if batch == 1:
                            raise
                        notes.append(f"{name}: not timed at batch {batch}: {fixed}")
        timings += time_side_by_side(calls, latency, batch=batch, runs=runs)
        notes += [f"{model}: {call.note}" for (model, _), call in calls.items() if call.note and batch == 1]
    report = LatencyReport(
        folder=out, machine=machine, threads=latency.threads, timings=timings,
        sparse_kernels=sparse_kernels_note(models["pruned"][0], pruned_exports), notes=notes,
    )
    write_json(out / "latency.json", report.model_dump(mode="json", exclude={"folder", "digest"}))
    return report


def describe(report: LatencyReport) -> str:
    return ", ".join(f"{t.model} {t.format} {t.median_ms:.3f} ms" + (f" (batch {t.batch})" if t.batch > 1 else "")
                     for t in report.timings) + " (medians)"


measure_latency = Stage("measure_latency", time_models, describe=describe, packages=runtime_packages())
