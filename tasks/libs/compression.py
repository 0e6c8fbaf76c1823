"""Compressed sizes of a file: zip-deflated and xz, as a user would ship it."""

from __future__ import annotations

import io
import lzma
import zipfile
from pathlib import Path


def zip_size(path: Path, name: str | None = None) -> int:
    """Bytes of a zip archive holding the file, deflated (the tutorial's measure), as a member
    called `name` (default: the file's own name; the archive stores it, so it counts)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.write(path, arcname=name or path.name)
    return buffer.getbuffer().nbytes


def xz_size(path: Path) -> int:
    """Bytes of the file compressed with xz (LZMA2) at preset 9: the strongest compressor of
    Python's standard library, and a common format for shipping files."""
    return len(lzma.compress(path.read_bytes(), preset=9))
