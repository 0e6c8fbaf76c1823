"""File helpers: atomic writes, content digests, and storage failures explained."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pruneflow.tasks.core.errors import PruneflowError


@contextlib.contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temporary path beside `target`, renamed onto it only if the block succeeds.

    The temporary path keeps `target`'s suffix, since Keras picks the save format from it.
    It may be filled as a file or as a folder (a folder can only replace a missing or empty
    one). On failure it is removed, so nothing half-written is ever left under `target`'s name.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.stem}.{uuid.uuid4().hex[:8]}.tmp{target.suffix}")
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()


def write_text(target: Path, text: str) -> Path:
    """Write `text` to `target`, atomically."""
    with atomic_path(target) as tmp:
        tmp.write_text(text)
    return Path(target)


def write_json(target: Path, payload: Any) -> Path:
    """Write `payload` as indented JSON, atomically."""
    return write_text(target, json.dumps(payload, indent=2, sort_keys=True) + "\n")


def file_digest(path: Path) -> str:
    """Return the SHA-256 of a file's bytes, as hex."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


# errno values that mean "this folder cannot take more data", whatever the writer was.
_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_READ_ONLY = {errno.EROFS, errno.EACCES, errno.EPERM}
MIN_FREE_BYTES = 1 << 20  # below this, a failed write is blamed on a full disk


def _os_error_of(error: BaseException) -> OSError | None:
    """The OSError with an errno behind an error, also when a library wrapped it (h5py, TensorFlow)."""
    while error is not None:
        if isinstance(error, OSError) and error.errno is not None:
            return error
        error = error.__cause__ or error.__context__
    return None


def _inside(path, folder: Path) -> bool:
    real, root = os.path.realpath(path), os.path.realpath(folder)
    return os.path.commonpath([real, root]) == root


def _existing_parent(folder: Path) -> Path:
    folder = Path(folder).absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


def storage_problem(folder: Path, error: BaseException | None = None) -> str | None:
    """Why writing under `folder` fails, when the reason is the storage rather than the code.

    Looks at the error's errno and, since TensorFlow and h5py often lose it, at the folder's
    file system itself: read-only, or (almost) no space left.
    """
    cause = _os_error_of(error) if error is not None else None
    if cause is not None and cause.filename and not _inside(cause.filename, folder):
        return None  # a file elsewhere (an input image, say): not this folder's storage
    code = cause.errno if cause is not None else None
    probe = _existing_parent(folder)
    read_only = bool(os.statvfs(probe).f_flag & os.ST_RDONLY) or not os.access(probe, os.W_OK)
    if code in _READ_ONLY or read_only:
        return f"{folder} is not writable (read-only file system or no permission)"
    free = shutil.disk_usage(probe).free
    if code in _FULL or free < MIN_FREE_BYTES:
        return f"no space left on the device holding {folder} ({free:,} bytes free)"
    return None


@contextlib.contextmanager
def storage_errors(folder: Path, what: str) -> Iterator[None]:
    """Turn a write that fails for lack of space or permission into a PruneflowError.

    Args:
        folder: where the writing happens, named in the message.
        what: what was being written, e.g. "the prune_train artifact".
    """
    try:
        yield
    except PruneflowError:
        raise
    except Exception as error:
        problem = storage_problem(folder, error)
        if problem is None:
            raise
        raise PruneflowError(
            f"cannot write {what}: {problem}. Free some space, or set output_root to a writable folder; "
            "results already stored are untouched."
        ) from error


class DigestCache:
    """SHA-256 of files, remembered in SQLite by (path, size, mtime, ctime, inode), so that a
    nightly re-run does not read every image of an unchanged dataset again. The ctime catches a
    rewrite that put the old mtime back (`cp -p`, `rsync -t`).

    As git does for its index, a file modified less than SETTLE_SECONDS before it was hashed is
    not remembered: on a file system with coarse timestamps, a rewrite within the same tick
    would otherwise keep its old digest. Several processes may share one cache file. The cache
    only saves time: if its file cannot be read or written (damaged, disk full), every file is
    hashed and nothing is remembered.
    """

    SETTLE_SECONDS = 2.0

    def __init__(self, path: Path):
        import sqlite3

        self._db, self._known, self._new = None, {}, []
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, timeout=30)
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS digests "
                "(path TEXT PRIMARY KEY, size INT, mtime_ns INT, ctime_ns INT, inode INT, sha256 TEXT)"
            )
            # One read of the whole table: a query per file would cost more than hashing a small JPEG.
            self._known = {row[0]: row[1:] for row in self._db.execute("SELECT * FROM digests")}
        except (sqlite3.Error, OSError):  # an unreadable cache (or an older layout): start without it
            self.close()

    def digest(self, path: Path) -> str:
        """The file's SHA-256, from the cache when its size, times and inode are unchanged."""
        import time

        stat = os.stat(path)
        signature = (stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino)
        known = self._known.get(str(path))
        if known is not None and tuple(known[:4]) == signature:
            return known[4]
        sha = file_digest(path)
        if time.time_ns() - max(stat.st_mtime_ns, stat.st_ctime_ns) > self.SETTLE_SECONDS * 1e9:
            self._new.append((str(path), *signature, sha))
        return sha

    def close(self) -> None:
        """Record the digests computed since opening, in one transaction, and close."""
        import sqlite3

        if self._db is None:
            return
        try:
            with self._db:  # one transaction
                self._db.executemany("INSERT OR REPLACE INTO digests VALUES (?, ?, ?, ?, ?, ?)", self._new)
        except (sqlite3.Error, OverflowError):
            pass  # a cache that cannot be written costs time later, never a wrong digest
        finally:
            self._db.close()
            self._db = None

    def __enter__(self) -> DigestCache:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
