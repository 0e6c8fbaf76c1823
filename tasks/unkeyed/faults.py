"""Fault injection for tests and drills: make prune-training fail the way production does.

Set PRUNEFLOW_INJECT_FAULT=<kind>@<epoch> (epochs count from 1) to raise at the end of that
epoch, after its checkpoint is written. A retry or re-run resumes after that epoch, so the
fault fires once. PRUNEFLOW_FAULT_TARGETS=0.6[,0.8] limits it to the prune-training of those
target sparsities (a sweep where some targets fail). <kind>@<point>, a point of POINTS, fires
between two steps of a promotion (pruneflow.tasks.decide.promote) or of an epoch's checkpoint
instead, each time it is reached. Kinds: resource_exhausted (an out-of-memory, retried), io_error
(retried), invalid_data (a user error, not retried), hang (sleeps, for a test to kill the process), wait
(pauses until the file named by PRUNEFLOW_FAULT_RELEASE exists, then goes on: a stage held
mid-write, for a test to start a concurrent run).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from pruneflow.tasks.core.errors import PruneflowError

FAULT_ENV = "PRUNEFLOW_INJECT_FAULT"
RELEASE_ENV = "PRUNEFLOW_FAULT_RELEASE"
TARGETS_ENV = "PRUNEFLOW_FAULT_TARGETS"
KINDS = ("resource_exhausted", "io_error", "invalid_data", "hang", "wait")
# The points between a promotion's steps: its version folder written, registered in MLflow, the
# `promoted` link switched, the `champion` alias moved; between an epoch's history and its
# checkpoint (at every epoch end).
POINTS = ("promote:written", "promote:registered", "promote:linked", "promote:aliased", "checkpoint:history")


def parse_fault(spec: str) -> tuple[str, str]:
    """(kind, where): where is an epoch number, or one of POINTS."""
    kind, _, where = spec.partition("@")
    epoch = where.isdigit() and int(where) >= 1
    if kind not in KINDS or not (epoch or where in POINTS):
        raise PruneflowError(
            f"{FAULT_ENV}={spec!r}: expected <kind>@<epoch> or <kind>@<point>, kind one of {', '.join(KINDS)}, "
            f"point one of {', '.join(POINTS)}"
        )
    if kind == "wait" and not os.environ.get(RELEASE_ENV):
        raise PruneflowError(f"{FAULT_ENV}={spec!r}: set {RELEASE_ENV} to the file whose creation ends the wait")
    return kind, where


def raise_fault(kind: str, where: str) -> None:
    from pruneflow.tasks.core.runtime import tf

    message = f"injected by {FAULT_ENV} " + (f"at the end of epoch {where}" if where.isdigit() else f"at {where}")
    if kind == "resource_exhausted":
        raise tf.errors.ResourceExhaustedError(None, None, f"OOM when allocating tensor ({message})")
    if kind == "io_error":
        raise OSError(f"I/O error ({message})")
    if kind == "invalid_data":
        raise PruneflowError(f"invalid training data ({message})")
    if kind == "wait":
        release = Path(os.environ[RELEASE_ENV])
        print(f"pruneflow: waiting for {release} ({message})", flush=True)
        deadline = time.monotonic() + 600
        while not release.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        return
    print(f"pruneflow: hanging ({message})", flush=True)
    time.sleep(3600)


def fault_callbacks(target: float) -> list:
    """The Keras callback that injects the configured fault into the prune-training of
    `target`, or none."""
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return []
    kind, where = parse_fault(spec)
    targets = os.environ.get(TARGETS_ENV)
    if not where.isdigit() or (targets and not any(abs(float(t) - target) < 1e-9 for t in targets.split(","))):
        return []
    from pruneflow.tasks.core.runtime import keras

    class InjectFault(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch + 1 == int(where):
                raise_fault(kind, where)

    return [InjectFault()]


def fault_point(point: str) -> None:
    """Inject the configured fault if it is set for `point` (one of POINTS)."""
    spec = os.environ.get(FAULT_ENV)
    if spec:
        kind, where = parse_fault(spec)
        if where == point:
            raise_fault(kind, where)
