"""Atomic file replacement: a reader sees the old bytes or the new ones, never half a file."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

__all__ = ("atomic_write",)


def atomic_write(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data``: a temp file beside it, fsync, ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
