"""File helpers: the digest cache that spares a re-run from reading every image again."""

import os
import time

from tasks.files import DigestCache, file_digest


def set_mtime(path, seconds_ago: float, keep_from=None) -> None:
    ns = keep_from.stat().st_mtime_ns if keep_from else time.time_ns() - int(seconds_ago * 1e9)
    os.utime(path, ns=(ns, ns))


def test_a_settled_file_is_read_once_then_known_by_size_mtime_and_inode(tmp_path):
    image, db = tmp_path / "a.jpg", tmp_path / "digests.sqlite"
    image.write_bytes(b"first")
    set_mtime(image, seconds_ago=60)
    with DigestCache(db) as cache:
        assert cache.digest(image) == file_digest(image)
    remembered = file_digest(image)
    stat = image.stat()
    with open(image, "r+b") as fh:  # same size, same inode, mtime put back: only the cache can tell
        fh.write(b"FIRST")
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    with DigestCache(db) as cache:
        assert cache.digest(image) == remembered  # served from the cache, not read
    set_mtime(image, seconds_ago=30)  # a real edit moves the mtime
    with DigestCache(db) as cache:
        assert cache.digest(image) == file_digest(image) != remembered


def test_a_file_modified_just_now_is_not_remembered(tmp_path):
    image, db = tmp_path / "a.jpg", tmp_path / "digests.sqlite"
    image.write_bytes(b"first")
    with DigestCache(db) as cache:
        cache.digest(image)
    stat = image.stat()
    with open(image, "r+b") as fh:  # rewritten within the same timestamp tick, as on a coarse file system
        fh.write(b"FIRST")
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    with DigestCache(db) as cache:
        assert cache.digest(image) == file_digest(image)


def test_a_damaged_cache_file_only_costs_time(tmp_path):
    image, db = tmp_path / "a.jpg", tmp_path / "digests.sqlite"
    image.write_bytes(b"first")
    db.write_bytes(b"this is not a database" * 100)
    with DigestCache(db) as cache:
        assert cache.digest(image) == file_digest(image)
