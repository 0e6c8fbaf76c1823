"""Disks that fail as production ones do: full, small, read-only, files that cannot be deleted (loop and bind mounts; root, as in CI)."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


def cannot(why: str) -> None:
    """Skip where the machine cannot make this disk; fail under CI=true, which runs as root and must
    run every disk test (a skip there would hide the failure it guards against)."""
    if os.environ.get("CI"):
        pytest.fail(f"{why}: CI runs as root and must mount")
    pytest.skip(f"{why}; this test needs root, as in CI")


def _mount(*args: str) -> None:
    done = subprocess.run(["mount", *args], capture_output=True, text=True)
    if done.returncode != 0:
        cannot(f"cannot mount here ({done.stderr.strip()})")


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
            cannot(f"cannot remount read-only here ({done.stderr.strip()})")
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


@contextlib.contextmanager
def undeletable(folder: Path, within: Path):
    """Nothing in `folder` can be deleted until the block ends (as a file held on NFS, or a read-only
    mount): a read-only bind mount of itself as root (whom permissions do not stop), its write
    permission removed otherwise. Undone wherever under `within` the folder has been moved."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        try:
            yield
        finally:
            for path in [within, *within.rglob("*")]:
                if path.is_dir():
                    path.chmod(path.stat().st_mode | 0o700)
        return
    for args in (["--bind", str(folder), str(folder)], ["-o", "remount,bind,ro", str(folder)]):
        done = subprocess.run(["mount", *args], capture_output=True, text=True)
        if done.returncode != 0:
            subprocess.run(["umount", str(folder)], capture_output=True)
            cannot(f"cannot mount here ({done.stderr.strip()})")
    try:
        yield
    finally:
        with open("/proc/self/mountinfo") as mounts:
            points = [line.split()[4] for line in mounts]
        for point in sorted((p for p in points if p.startswith(f"{within}/")), reverse=True):
            subprocess.run(["umount", "-l", point], check=True)
