"""Folders made once per test session and shared by its processes (pytest-xdist runs two).

A session-scoped fixture is otherwise made once per process: the tiny dataset, its baseline and
the stored runs would each be trained twice. Here the first process to ask makes the folder,
under a file lock, while the other waits; both then read it. A folder is complete once its
`.made` mark exists: one whose maker failed is made again from scratch by the next to ask.
"""

import os
import shutil
from collections.abc import Callable
from pathlib import Path

from filelock import FileLock


def session_folder(tmp_path_factory) -> Path:
    """The test session's temporary folder: under pytest-xdist, the one above each process's own."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def made_once(tmp_path_factory, name: str, make: Callable[[Path], object]) -> Path:
    """session_folder/name, filled by `make(folder)` once in the session (the folder exists, empty,
    when `make` is called)."""
    folder = session_folder(tmp_path_factory) / name
    mark = folder / ".made"
    with FileLock(f"{folder}.lock"):
        if not mark.exists():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            make(folder)
            mark.touch()
    return folder
