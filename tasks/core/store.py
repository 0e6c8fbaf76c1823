"""The artifact store: one content-addressed folder per stage output, written atomically.

A stage's output lives in `ROOT/<stage>/<key>/`, under the key pruneflow.tasks.core.stage derives from the
stage's code and inputs. The folder is written under a temporary name and renamed into place,
and it records the digest of every file in it, so a folder that was half-written or altered
later is detected. The store is the pipeline's only cache: an intact folder under the key is
reused, anything else is built again.

A stage produces its folder holding a lock on the key (`ROOT/<stage>/.lock-<key>`, an flock,
released by the kernel even when its holder is killed), and reuses an intact folder it finds
there, such as the one a concurrent run of the same config stored while it waited.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from filelock import FileLock, Timeout
from pydantic import BaseModel, ConfigDict

from pruneflow.tasks.core.files import file_digest, storage_errors
from pruneflow.tasks.core.log import run_logger

DIGESTS = "digests.json"
RESULT = "result.json"  # the stage's result, as the flow received it; read back on reuse


def digest_of(value: Any, strict: bool = False) -> str:
    """SHA-256 of a JSON-able value (pydantic models included), stable across runs.

    Args:
        strict: refuse a value JSON cannot represent, instead of using its str() (for keys).
    """
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=None if strict else str)
    return hashlib.sha256(text.encode()).hexdigest()


class Content(BaseModel):
    """A value known by its content digest: stage keys use the digest, never where it lives."""

    model_config = ConfigDict(frozen=True)

    digest: str = ""


class StoredArtifact(Content):
    """Base of every stage's result: the artifact folder it lives in and its content digest.

    Downstream stages key on `digest`, so they re-run when this artifact's content changes.
    """

    folder: Path


A = TypeVar("A", bound=StoredArtifact)


def _first_attempt() -> bool:
    """False in a Prefect retry of the current task run, True otherwise (outside Prefect too)."""
    from prefect.context import TaskRunContext

    context = TaskRunContext.get()
    return context is None or context.task_run.run_count <= 1


class ArtifactStore(BaseModel):
    """Where stage outputs live: `root/<stage>/<key>/`."""

    model_config = ConfigDict(frozen=True)

    root: Path

    def folder(self, stage: str, key: str) -> Path:
        return self.root / stage / key

    def work_folder(self, stage: str, key: str) -> Path:
        """A scratch folder that outlives a crashed attempt (e.g. training checkpoints)."""
        return self.root / stage / f".work-{key}"

    def problem(self, stage: str, key: str) -> str | None:
        """Why the stored artifact cannot be used, or None when it is complete and intact."""
        folder = self.folder(stage, key)
        if not folder.is_dir():
            return f"{folder} does not exist"
        try:
            recorded = json.loads((folder / DIGESTS).read_text())
        except (OSError, ValueError):
            recorded = None
        if not isinstance(recorded, dict) or not all(isinstance(digest, str) for digest in recorded.values()):
            return f"{folder / DIGESTS} is missing or unreadable"
        for name, expected in recorded.items():
            path = folder / name
            if not path.is_file():
                return f"{path} is missing"
            if file_digest(path) != expected:
                return f"{path} does not match its recorded digest"
        present = sorted(path.relative_to(folder).as_posix() for path in folder.rglob("*") if path.is_file())
        added = [name for name in present if name != DIGESTS and name not in recorded]
        if added:
            return f"{folder / added[0]} was added after the artifact was stored"
        return None

    def digest(self, stage: str, key: str) -> str:
        """Content digest of a stored artifact: the digest of its recorded file digests."""
        return hashlib.sha256((self.folder(stage, key) / DIGESTS).read_bytes()).hexdigest()

    def stored(self, stage: str, key: str, result: StoredArtifact) -> StoredArtifact:
        """`result` (built while writing in a temporary folder) pointed at its final folder."""
        return result.model_copy(update={"folder": self.folder(stage, key), "digest": self.digest(stage, key)})

    def produce(
        self, stage: str, key: str, kind: type[A], build: Callable[[Path], A], *,
        force: bool | None = None, scratch: Path | None = None,
    ) -> tuple[A, bool]:
        """Run `build` into a temporary folder and store what it wrote under the key.

        Under the key's lock: an intact folder already under the key (an earlier run's, or one
        another run stored while this one waited) is reused instead of built again, unless
        `force`. Leftovers of a killed writer of this key (`.tmp-<key>-*`) are removed
        first. A write that fails for lack of space or permission raises PruneflowError;
        stored folders are never touched (a forced build replaces its own key's folder, whole).

        Args:
            kind: the result's type, to read it back from result.json.
            build: writes the stage's files into the folder it is given and returns the
                stage's result; the result is kept in the folder as result.json.
            force: build even over an intact folder; default: Prefect's refresh setting
                (`pruneflow run --refresh`).
            scratch: a work folder of this key (checkpoints) to remove, under the lock, once
                the artifact is stored; also before a forced build, unless it is a retry (whose
                checkpoints are this run's own).

        Returns:
            The stored result, and whether it was reused rather than built.
        """
        if force is None:
            from prefect.settings import PREFECT_TASKS_REFRESH_CACHE

            force = bool(PREFECT_TASKS_REFRESH_CACHE.value())
        with storage_errors(self.root, f"the {stage} artifact"), self._lock(stage, key) as waited:
            self._sweep(stage, key)
            problem = None if force else self.problem(stage, key)
            if not force and problem is None:
                why = "what the other run stored" if waited else "the intact folder"
                run_logger().info("%s: reusing %s under %s", stage, why, key)
                return self.load(stage, key, kind), True
            if problem and self.folder(stage, key).exists():
                run_logger().warning("%s: stored artifact unusable (%s); building it again", stage, problem)
            if force and scratch is not None and _first_attempt():
                shutil.rmtree(scratch, ignore_errors=True)  # forced: resume from no earlier run's checkpoint
            with self.writing(stage, key) as tmp:
                result = build(tmp)
                payload = result.model_dump(mode="json", exclude={"folder", "digest"})
                (tmp / RESULT).write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
            if scratch is not None:
                shutil.rmtree(scratch, ignore_errors=True)
            return self.stored(stage, key, result), False

    @contextlib.contextmanager
    def _lock(self, stage: str, key: str) -> Iterator[bool]:
        """Hold the key's lock; yield whether another holder had to be waited for."""
        lock_path = self.folder(stage, key).parent / f".lock-{key}"
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(lock_path)
        waited = False
        try:
            lock.acquire(timeout=0)
        except Timeout:
            run_logger().warning("%s: another run is producing %s; waiting for it to finish", stage, key)
            lock.acquire()
            waited = True
        try:
            yield waited
        finally:
            lock.release()

    def load(self, stage: str, key: str, kind: type[A]) -> A:
        """The result a stage stored under the key, pointed at its folder."""
        recorded = json.loads((self.folder(stage, key) / RESULT).read_text())
        return self.stored(stage, key, kind.model_validate({**recorded, "folder": self.folder(stage, key)}))

    def _sweep(self, stage: str, key: str) -> None:
        """Remove what a killed writer of this key left (only called under the key's lock)."""
        parent = self.folder(stage, key).parent
        for leftover in [*parent.glob(f".tmp-{key}-*"), *parent.glob(f".old-{key}-*")]:
            shutil.rmtree(leftover, ignore_errors=True)

    @contextlib.contextmanager
    def writing(self, stage: str, key: str) -> Iterator[Path]:
        """Yield an empty temporary folder; on success, record its digests and move it into place.

        An existing folder under the same key (a corrupt one, or a forced re-run) is replaced.
        On failure the temporary folder is removed and any existing folder is left as it was.
        """
        final = self.folder(stage, key)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.parent / f".tmp-{key}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            yield tmp
            digests = {
                path.relative_to(tmp).as_posix(): file_digest(path)
                for path in sorted(tmp.rglob("*"))
                if path.is_file()
            }
            (tmp / DIGESTS).write_text(json.dumps(digests, indent=2, sort_keys=True) + "\n")
            if final.exists():
                trash = final.parent / f".old-{key}-{uuid.uuid4().hex[:8]}"
                os.replace(final, trash)
                os.replace(tmp, final)
                shutil.rmtree(trash, ignore_errors=True)
            else:
                os.replace(tmp, final)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
