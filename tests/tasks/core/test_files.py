"""File helpers: the digest cache that spares a re-run from reading every image again."""

import os

from pruneflow.tasks.core.files import DigestCache, file_digest


def test_a_settled_file_is_read_once_then_known_by_size_times_and_inode(tmp_path, monkeypatch):
    from pruneflow.tasks.core import files as files_module

    image, db = tmp_path / "a.jpg", tmp_path / "digests.sqlite"
    image.write_bytes(b"first")
    monkeypatch.setattr(DigestCache, "SETTLE_SECONDS", 0.0)
    reads = []
    monkeypatch.setattr(files_module, "file_digest", lambda path: reads.append(path) or file_digest(path))
    with DigestCache(db) as cache:
        first = cache.digest(image)
    with DigestCache(db) as cache:
        assert cache.digest(image) == first
    assert reads == [image]  # the second run did not read the file
    stat = image.stat()
    with open(image, "r+b") as fh:  # same size, mtime put back (as cp -p does): the ctime moves
        fh.write(b"FIRST")
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    with DigestCache(db) as cache:
        assert cache.digest(image) == file_digest(image) != first
    assert len(reads) == 2


def test_a_file_modified_just_now_is_not_remembered(tmp_path, monkeypatch):
    """On a file system with coarse timestamps, a rewrite in the same tick would look unchanged."""
    from pruneflow.tasks.core import files as files_module

    image, db = tmp_path / "a.jpg", tmp_path / "digests.sqlite"
    image.write_bytes(b"first")  # modified now: within SETTLE_SECONDS of being hashed
    reads = []
    monkeypatch.setattr(files_module, "file_digest", lambda path: reads.append(path) or file_digest(path))
    with DigestCache(db) as cache:
        cache.digest(image)
    with DigestCache(db) as cache:
        assert cache.digest(image) == file_digest(image)
    assert reads == [image, image]  # read again: the first digest was not recorded


def test_a_damaged_cache_file_only_costs_time(tmp_path):
    image, db = tmp_path / "a.jpg", tmp_path / "digests.sqlite"
    image.write_bytes(b"first")
    db.write_bytes(b"this is not a database" * 100)
    with DigestCache(db) as cache:
        assert cache.digest(image) == file_digest(image)


def test_a_failure_on_a_file_elsewhere_is_not_blamed_on_the_output_folder(tmp_path):
    import errno

    from pruneflow.tasks.core.files import storage_problem

    outputs = tmp_path / "outputs"
    outputs.mkdir()
    elsewhere = PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "data" / "a.jpg"))
    assert storage_problem(outputs, elsewhere) is None
    inside = PermissionError(errno.EACCES, "Permission denied", str(outputs / "artifacts" / "x.h5"))
    assert storage_problem(outputs, inside) == f"{outputs} is not writable (read-only file system or no permission)"
    full = OSError(errno.ENOSPC, "No space left on device", str(outputs / "x.h5"))
    assert storage_problem(outputs, full).startswith(f"no space left on the device holding {outputs}")
