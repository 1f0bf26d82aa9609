"""Where file-based stores may create folders.

A store URL names a file (SQLite) or a folder (JSONL). sil-guard creates that file or
folder, but a missing folder above it only inside its own data folder
(``$XDG_DATA_HOME/sil-guard``): a typo such as ``sqlite:////data/sil.db`` must not
silently create ``/data``.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import ConfigError

__all__ = ("default_data_dir", "prepare_folder")


def default_data_dir() -> Path:
    """sil-guard's data folder: ``$XDG_DATA_HOME/sil-guard`` (``~/.local/share/sil-guard``)."""
    return Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share") / "sil-guard"


def _inside(path: Path, folder: Path) -> bool:
    path, folder = path.resolve(), folder.resolve()
    return path == folder or folder in path.parents


def prepare_folder(folder: Path, url: str) -> None:
    """Make sure ``folder`` exists: it must already, unless it lies in the data folder."""
    if folder.is_dir():
        return
    data = default_data_dir()
    if _inside(folder, data):
        folder.mkdir(parents=True, exist_ok=True)
        return
    if folder.exists():
        raise ConfigError(f"{url}: {folder} is not a folder")
    raise ConfigError(
        f"{url}: the folder {folder} does not exist; create it first "
        f"(sil-guard creates missing folders only inside its data folder {data})"
    )
