"""Tiny data builders and the assertions the tests share."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pruneflow.flows.stages import STAGES as PIPELINE
from pruneflow.tasks.specs.formats import FORMATS, KERAS

REPO = Path(__file__).parents[1]
IMAGE_SIZE = 16
# The stages' names in order: each stores an artifact and is cached. publish_report follows them.
STAGES = [stage.name for stage in PIPELINE]
# What flows.graph.prepare runs once per run (a sweep's included), and what prune_to runs per target.
PREPARED = STAGES[: STAGES.index("prune_train")]
PER_TARGET = STAGES[STAGES.index("prune_train") :]


def takes(*inputs: str) -> set[str]:
    """The stages whose build function takes one of these inputs (by its parameter's name)."""
    return {stage.name for stage in PIPELINE if set(stage.inputs) & set(inputs)}


def deployable_files(formats) -> set[tuple[str, str]]:
    """(model, format) of every file a run that exports `formats` can deploy: each model's Keras
    .h5, the pruned model's file in each format, the baseline's in each dense counterpart."""
    return {("baseline", KERAS), ("pruned", KERAS)} | {("pruned", fmt) for fmt in formats} | {
        ("baseline", FORMATS[fmt].dense) for fmt in formats
    }
CLASSES = ("bottom", "top")  # which half of the image is bright
SPLIT_SIZES = {"train": 40, "val": 12, "test": 12}


def write_tiny_dataset(folder: Path, seed: int = 0) -> Path:
    """Write JPEGs and train/val/test CSVs (paths relative to the CSVs' folder).

    Each image is noise with one bright half, so a small CNN learns it in two epochs.
    """
    from pruneflow.tasks.core.runtime import tf

    rng = np.random.default_rng(seed)
    (folder / "img").mkdir(parents=True, exist_ok=True)
    for split, count in SPLIT_SIZES.items():
        rows = []
        for i in range(count):
            label = CLASSES[i % 2]
            image = rng.integers(0, 80, size=(IMAGE_SIZE, IMAGE_SIZE, 3))
            half = slice(0, IMAGE_SIZE // 2) if label == "top" else slice(IMAGE_SIZE // 2, IMAGE_SIZE)
            image[half] += 170
            name = f"img/{split}_{i:03d}.jpg"
            tf.io.write_file(str(folder / name), tf.io.encode_jpeg(image.astype(np.uint8), quality=95))
            rows.append({"filename": name, "label": label})
        pd.DataFrame(rows).to_csv(folder / f"{split}.csv", index=False)
    return folder


# The model shapes and save formats the stage tests run over, as TFMOT's tests do: the same
# three prunable kernels (a Conv2D and two Dense) built as a Sequential model, a functional
# model, and a functional model whose convolution sits in a nested functional "backbone".
MODEL_KINDS = ("sequential", "functional", "nested")
SAVE_FORMATS = (".h5", ".keras")
MODEL_VARIANTS = [(kind, suffix) for kind in MODEL_KINDS for suffix in SAVE_FORMATS]
PRUNABLE_KERNELS = 3


def build_tiny_cnn(n_classes: int = 2, channels: int = 3, kind: str = "sequential"):
    from pruneflow.tasks.core.runtime import keras

    layers = keras.layers
    shape = (IMAGE_SIZE, IMAGE_SIZE, channels)
    if kind == "sequential":
        return keras.Sequential([
            keras.Input(shape=shape), layers.Conv2D(8, 3, activation="relu"), layers.MaxPooling2D(),
            layers.Flatten(), layers.Dense(32, activation="relu"), layers.Dense(n_classes, activation="softmax"),
        ])
    inputs = keras.Input(shape=shape)
    if kind == "functional":
        features = layers.MaxPooling2D()(layers.Conv2D(8, 3, activation="relu")(inputs))
    elif kind == "nested":
        image = keras.Input(shape=shape)
        backbone = keras.Model(image, layers.MaxPooling2D()(layers.Conv2D(8, 3, activation="relu")(image)), name="backbone")
        features = backbone(inputs)  # called without training=False, so that TFMOT prunes it
    else:
        raise ValueError(f"unknown model kind {kind!r}; one of {MODEL_KINDS}")
    hidden = layers.Dense(32, activation="relu")(layers.Flatten()(features))
    return keras.Model(inputs, layers.Dense(n_classes, activation="softmax")(hidden), name=f"tiny_{kind}")


def train_tiny_baseline(data: Path, out_path: Path, kind: str = "sequential") -> Path:
    """Train build_tiny_cnn(kind=kind) on the tiny dataset for a few epochs and save it (the
    suffix of `out_path`, .h5 or .keras, picks the format)."""
    from pruneflow.tasks.demo import train_baseline
    from pruneflow.tasks.specs.config import parse_config

    config = parse_config(make_config_dict(data, out_path, out_path.parent / "unused"))
    return train_baseline(config, epochs=4, out_path=out_path, build_model=lambda: build_tiny_cnn(kind=kind))


def make_config_dict(data: Path, baseline: Path, output_root: Path, **sections) -> dict:
    config = {
        "dataset": {
            "train_csv": str(data / "train.csv"),
            "val_csv": str(data / "val.csv"),
            "test_csv": str(data / "test.csv"),
            "image_height": IMAGE_SIZE,
            "image_width": IMAGE_SIZE,
            "channels": 3,
            "batch_size": 8,
        },
        "model": {"baseline": str(baseline)},
        "pruning": {"kind": "constant", "target_sparsity": 0.5, "begin_step": 0, "frequency": 1},
        "training": {"epochs": 2, "optimizer": "adam", "learning_rate": 1e-3},
        "output_root": str(output_root),
        "seed": 0,
        # One TFLite format, briefly timed: the tests that are about the files set every format.
        "export": {"formats": ["int8"], "representative_images": 16, "latency_runs": 10, "latency_warmup": 1},
    }
    config.update(sections)
    return config


def sparsity(values: np.ndarray) -> float:
    return 1.0 - np.count_nonzero(values) / values.size


def assert_kernels_sparse(layers, expected: float, tolerance: float = 0.02) -> None:
    """Every Conv2D and Dense kernel among `layers` has `expected` zeros, within tolerance."""
    kernels = [layer.kernel.numpy() for layer in layers if hasattr(layer, "kernel")]
    assert kernels, "no layer has a kernel"
    measured = [sparsity(k) for k in kernels]
    assert all(abs(s - expected) <= tolerance for s in measured), f"kernel sparsities {measured}, expected {expected}"


def assert_same_predictions(model_a, model_b, images, atol: float = 1e-5) -> None:
    a = model_a(images, training=False).numpy()
    b = model_b(images, training=False).numpy()
    np.testing.assert_allclose(a, b, atol=atol)


def task_runs(flow_run_id, settle: float = 1.0, timeout: float = 30.0) -> list[tuple[str, str, int]]:
    """(task name, state name, run count) of a flow run's task runs, in start order.

    The server records task runs from events, after the flow run's own final state: the last
    task runs of a flow that just finished may not be there yet. Read until every one is final
    and nothing has changed for `settle` seconds.
    """
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    def read() -> list[tuple[str, str, int]]:
        with get_client(sync_client=True) as client:
            runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
        runs.sort(key=lambda run: run.start_time or run.expected_start_time)
        # A task run can be on record a moment before its first state.
        final = [run.state is not None and run.state.is_final() for run in runs]
        return [(run.name.rsplit("-", 1)[0], run.state.name if done else "", run.run_count) for run, done in zip(runs, final)]

    deadline, seen, since = time.monotonic() + timeout, None, time.monotonic()
    while True:
        found = read()
        if found != seen:
            seen, since = found, time.monotonic()
        elif all(state for _, state, _ in found) and time.monotonic() - since >= settle:
            return found
        if time.monotonic() > deadline:
            return found
        time.sleep(0.25)


def stage_states(flow_run_id) -> dict[str, str]:
    """Task name -> state name (Completed, Cached, Failed) of the last run of each task."""
    return {name: state for name, state, _ in task_runs(flow_run_id)}


def artifacts_of(flow_run_id) -> dict:
    """Key -> the Prefect artifact a flow run published under it."""
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
    return {artifact.key: artifact for artifact in found}


def latest_flow_run_id():
    from prefect import get_client
    from prefect.client.schemas.sorting import FlowRunSort

    with get_client(sync_client=True) as client:
        [latest] = client.read_flow_runs(sort=FlowRunSort.START_TIME_DESC, limit=1)
    return latest.id


def _mount(*args: str) -> None:
    done = subprocess.run(["mount", *args], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount here ({done.stderr.strip()}); this test needs root, as in CI")


@contextlib.contextmanager
def small_disk(folder: Path, size: int) -> Iterator[Path]:
    """A real file system of `size` bytes (a tmpfs) mounted on `folder`; unmounted afterwards."""
    folder.mkdir(parents=True, exist_ok=True)
    _mount("-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder))
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=True)


def fill_disk(folder: Path, leave: int = 0) -> None:
    """Write a filler file until fewer than `leave` bytes are free on `folder`'s file system."""
    import shutil

    chunk = b"\0" * 65536
    with open(folder / "filler", "wb") as out:
        try:
            while shutil.disk_usage(folder).free > leave:
                out.write(chunk[: max(1, min(len(chunk), shutil.disk_usage(folder).free - leave))])
                out.flush()
        except OSError:
            pass


@contextlib.contextmanager
def read_only(folder: Path) -> Iterator[Path]:
    """`folder` made read-only for real: as root (whom permissions do not stop), a read-only
    bind mount of itself; otherwise, its write permissions removed."""
    if os.geteuid() != 0:
        modes = {path: path.stat().st_mode for path in [folder, *folder.rglob("*")]}
        for path, mode in modes.items():
            path.chmod(mode & ~0o222)
        try:
            yield folder
        finally:
            for path, mode in modes.items():
                path.chmod(mode)
        return
    _mount("--bind", str(folder), str(folder))
    try:
        done = subprocess.run(["mount", "-o", "remount,bind,ro", str(folder)], capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot remount read-only here ({done.stderr.strip()})")
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def target_result(target: float, accuracy: float, zip_bytes: int, *, baseline_accuracy: float = 0.95,
                  model: Path = Path("/nowhere/pruned.h5"), seconds: float = 1.0, latency_ms: float = 1.0,
                  files: dict[str, tuple[float, int, float]] | None = None):
    """A sweep target's result with the given figures, for tests of what is decided from them.

    Args:
        accuracy, zip_bytes, latency_ms: the pruned Keras model's.
        files: export format -> (accuracy, zip bytes, latency in ms) of the pruned model's file in
            that format; the baseline's files are 40,000 B zipped, with the baseline's accuracy.
    """
    from pruneflow.tasks.libs.artifacts import (
        Evaluation,
        ExportedFile,
        ExportedModels,
        ExportEvaluation,
        FileEvaluation,
        LatencyReport,
        ModelSize,
        SanityReport,
        SizeReport,
        Timing,
        TrainedModel,
    )
    from pruneflow.tasks.libs.outcome import TargetResult
    from pruneflow.tasks.libs.sparsity import TensorSparsity
    from pruneflow.tasks.specs.config import ConstantSchedule

    folder = model.parent
    size = 10_000
    zeros = round(size * target)
    files = files or {}
    dense = list(dict.fromkeys(FORMATS[fmt].dense for fmt in files))

    def exported(fmt: str, zipped: int) -> ExportedFile:
        return ExportedFile(format=fmt, file=f"model_{fmt}.tflite", raw_bytes=2 * zipped, zip_bytes=zipped,
                            xz_bytes=zipped, weights=[])

    def timing(owner: str, fmt: str, ms: float) -> Timing:
        return Timing(model=owner, format=fmt, median_ms=ms, p90_ms=1.2 * ms, runs=10)

    return TargetResult(
        target=target, pruned_model=model, schedule=ConstantSchedule(target_sparsity=target, end_step=10),
        baseline=Evaluation(folder=folder, accuracy=baseline_accuracy, loss=0.1, examples=100),
        pruned=Evaluation(folder=folder, accuracy=accuracy, loss=0.2, examples=100),
        sanity=SanityReport(folder=folder, expected=target, tolerance=0.01, tensors=[
            TensorSparsity(layer="dense", weight="kernel", size=size, zeros=zeros, sparsity=zeros / size, passed=True)
        ]),
        sizes=SizeReport(
            folder=folder,
            baseline=ModelSize(file="baseline.h5", raw_bytes=50_000, zip_bytes=40_000, xz_bytes=39_000,
                               weights=size, nonzero_weights=size),
            pruned=ModelSize(file="pruned.h5", raw_bytes=50_000, zip_bytes=zip_bytes, xz_bytes=zip_bytes,
                             weights=size, nonzero_weights=size - zeros),
        ),
        training=TrainedModel(folder=folder, epochs=2, resumed_from_epoch=0, steps=10, seconds=seconds,
                              final_val_accuracy=accuracy),
        baseline_exports=[ExportedModels(folder=folder, files=[exported(fmt, 40_000) for fmt in dense])],
        baseline_export_evaluation=ExportEvaluation(folder=folder, files=[
            FileEvaluation(format=fmt, accuracy=baseline_accuracy, agreement=1.0, examples=100) for fmt in dense
        ]),
        exports=[ExportedModels(folder=folder, files=[exported(fmt, z) for fmt, (_, z, _) in files.items()])],
        export_evaluation=ExportEvaluation(folder=folder, files=[
            FileEvaluation(format=fmt, accuracy=a, agreement=1.0, examples=100) for fmt, (a, _, _) in files.items()
        ]),
        latency=LatencyReport(
            folder=folder, machine="test machine", threads=1, sparse_kernels="",
            timings=[timing("baseline", "keras_h5", 1.0), timing("pruned", "keras_h5", latency_ms)]
            + [timing("baseline", fmt, 0.1) for fmt in dense]
            + [timing("pruned", fmt, ms) for fmt, (_, _, ms) in files.items()],
        ),
    )


class Cli:
    """`pruneflow COMMAND CONFIG` in a child process, its output collected as it comes."""

    def __init__(self, config_path: Path, command: str = "run", **env: str):
        from prefect.settings import PREFECT_API_URL

        environment = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "PYTHONUNBUFFERED": "1", **env}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "pruneflow.flows.cli", command, str(config_path)], cwd=REPO, env=environment,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        self.lines: list[str] = []
        self.reader = threading.Thread(target=lambda: self.lines.extend(self.process.stdout), daemon=True)
        self.reader.start()

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_for(self, text: str, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.output:
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"{text!r} never came (exit {self.process.poll()}):\n{self.output[-3000:]}")
            time.sleep(0.1)

    def finish(self, timeout: float = 300) -> int:
        code = self.process.wait(timeout=timeout)
        self.reader.join(timeout=10)
        return code

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
