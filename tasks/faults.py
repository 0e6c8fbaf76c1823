"""Fault injection for tests and drills: make prune-training fail the way production does.

Set PRUNEFLOW_INJECT_FAULT=<kind>@<epoch> (epochs count from 1) to raise at the end of that
epoch, after its checkpoint is written. A retry or re-run resumes after that epoch, so the
fault fires once. Kinds: resource_exhausted (an out-of-memory, retried), io_error (retried),
invalid_data (a user error, not retried), hang (sleeps, for a test to kill the process), wait
(pauses until the file named by PRUNEFLOW_FAULT_RELEASE exists, then goes on: a stage held
mid-write, for a test to start a concurrent run).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from tasks.errors import PruneflowError

FAULT_ENV = "PRUNEFLOW_INJECT_FAULT"
RELEASE_ENV = "PRUNEFLOW_FAULT_RELEASE"
KINDS = ("resource_exhausted", "io_error", "invalid_data", "hang", "wait")


def parse_fault(spec: str) -> tuple[str, int]:
    kind, _, epoch = spec.partition("@")
    if kind not in KINDS or not epoch.isdigit() or int(epoch) < 1:
        raise PruneflowError(f"{FAULT_ENV}={spec!r}: expected <kind>@<epoch>, kind one of {', '.join(KINDS)}")
    if kind == "wait" and not os.environ.get(RELEASE_ENV):
        raise PruneflowError(f"{FAULT_ENV}={spec!r}: set {RELEASE_ENV} to the file whose creation ends the wait")
    return kind, int(epoch)


def raise_fault(kind: str, epoch: int) -> None:
    from tasks.runtime import tf

    message = f"injected by {FAULT_ENV} at the end of epoch {epoch}"
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


def fault_callbacks() -> list:
    """The Keras callback that injects the configured fault, or none."""
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return []
    from tasks.runtime import keras

    kind, at_epoch = parse_fault(spec)

    class InjectFault(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch + 1 == at_epoch:
                raise_fault(kind, at_epoch)

    return [InjectFault()]
