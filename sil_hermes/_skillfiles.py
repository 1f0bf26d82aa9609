"""A skill folder as a dict of files, read whole and replaced atomically.

Files map relative POSIX paths to their text (UTF-8), or to ``{"base64": ...}`` for
bytes that are not UTF-8, so the dict is JSON and restores byte for byte. A replacement
is built in a staging folder beside the skills tree (same file system, outside
``skills/`` so Hermes never indexes it) and swapped in with one ``renameat2
(RENAME_EXCHANGE)`` where Linux offers it, else two renames: a reader sees the old
folder or the new one, never a half-written one.
"""

import base64
import ctypes
import os
import shutil
import uuid
from pathlib import Path
from typing import Dict, Optional, Union

__all__ = ("find_skill_dir", "read_files", "replace_dir")

FileContent = Union[str, Dict[str, str]]
_SKIP_DIRS = {"__pycache__", ".git"}
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def find_skill_dir(skills_dir: Path, name: str) -> Optional[Path]:
    """The folder of skill ``name``: ``skills/<name>`` or ``skills/<category>/<name>``."""
    direct = skills_dir / name
    if (direct / "SKILL.md").is_file():
        return direct
    try:
        categories = [p for p in skills_dir.iterdir() if p.is_dir() and not p.name.startswith(".")]
    except FileNotFoundError:
        return None
    for category in sorted(categories):
        candidate = category / name
        if (candidate / "SKILL.md").is_file():
            return candidate
    return None


def read_files(folder: Optional[Path]) -> Dict[str, FileContent]:
    """Every file under ``folder`` (``{}`` when it does not exist)."""
    files: Dict[str, FileContent] = {}
    if folder is None or not folder.is_dir():
        return files
    for root, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if d not in _SKIP_DIRS)
        for fname in sorted(names):
            path = Path(root) / fname
            raw = path.read_bytes()
            rel = path.relative_to(folder).as_posix()
            try:
                files[rel] = raw.decode("utf-8")
            except UnicodeDecodeError:
                files[rel] = {"base64": base64.b64encode(raw).decode("ascii")}
    return files


def _encode(content: FileContent) -> bytes:
    if isinstance(content, dict):
        return base64.b64decode(content["base64"])
    return content.encode("utf-8")


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux ``renameat2``); ``False`` when unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0


def replace_dir(dest: Path, files: Dict[str, FileContent], staging_root: Path) -> None:
    """Make ``dest`` hold exactly ``files`` (remove it when ``files`` is empty), atomically."""
    staging_root.mkdir(parents=True, exist_ok=True)
    tag = uuid.uuid4().hex[:12]
    old = staging_root / f"old-{dest.name}-{tag}"
    if not files:
        if dest.exists():
            os.rename(dest, old)
            shutil.rmtree(old, ignore_errors=True)
        return
    staged = staging_root / f"new-{dest.name}-{tag}"
    try:
        for rel, content in files.items():
            path = staged / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "wb") as f:
                f.write(_encode(content))
                f.flush()
                os.fsync(f.fileno())
        dest.parent.mkdir(parents=True, exist_ok=True)
        if not dest.exists():
            os.rename(staged, dest)
            return
        if _exchange(staged, dest):  # staged now holds the old folder
            shutil.rmtree(staged, ignore_errors=True)
            return
        os.rename(dest, old)
        os.rename(staged, dest)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        if staged.exists():
            shutil.rmtree(staged, ignore_errors=True)
