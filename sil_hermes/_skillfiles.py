"""A skill folder as a dict of files, read whole and replaced atomically.

Files map relative POSIX paths to their text (UTF-8), or to ``{"base64": ...}`` for
bytes that are not UTF-8, so the dict is JSON and restores byte for byte. What a plain
text file does not say is added only where it differs from the default, so a plain
skill's dict (and version) stays the same: ``{"text"|"base64": ..., "mode": "0755"}`` for
an executable file (its exact mode; like git, other files are not told apart by mode and
are restored 0644, so a version is its content whatever ``skill_manage``'s 0600 or a
checkout's 0644), ``{"link": target}`` for a symlink (kept a link, its target verbatim),
``{"dir": True}`` under ``"path/"`` for an empty folder. A replacement
is built in a staging folder beside the skills tree (same file system, outside
``skills/`` so Hermes never indexes it) and swapped in with one ``renameat2
(RENAME_EXCHANGE)`` where Linux offers it, else two renames: a reader sees the old
folder or the new one, never a half-written one.
"""

import base64
import ctypes
import os
import shutil
import stat
import uuid
from pathlib import Path
from typing import Any, Dict, Optional, Union

__all__ = ("find_skill_dir", "read_files", "replace_dir", "text_of")

FileContent = Union[str, Dict[str, str]]
_SKIP_DIRS = {"__pycache__", ".git"}
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
_DEFAULT_MODE = 0o644
_EXEC = 0o111


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
    """Every file, symlink and empty folder under ``folder`` (``{}`` when it does not exist)."""
    files: Dict[str, Any] = {}
    if folder is None or not folder.is_dir():
        return files
    for root, dirs, names in os.walk(folder):
        base = Path(root)
        links = [d for d in dirs if (base / d).is_symlink()]  # a link to a folder: a link
        dirs[:] = sorted(d for d in dirs if d not in _SKIP_DIRS and d not in links)
        entries = sorted(names + links)
        if not dirs and not entries and base != folder:
            files[base.relative_to(folder).as_posix() + "/"] = {"dir": True}
        for fname in entries:
            path = base / fname
            rel = path.relative_to(folder).as_posix()
            if path.is_symlink():
                files[rel] = {"link": os.readlink(path)}
                continue
            raw = path.read_bytes()
            mode = stat.S_IMODE(path.stat().st_mode)
            try:
                text = raw.decode("utf-8")
                entry: Any = {"text": text} if mode & _EXEC else text
            except UnicodeDecodeError:
                entry = {"base64": base64.b64encode(raw).decode("ascii")}
            if mode & _EXEC:
                entry["mode"] = format(mode, "04o")
            files[rel] = entry
    return files


def _encode(content: FileContent) -> bytes:
    if isinstance(content, dict):
        if "text" in content:
            return content["text"].encode("utf-8")
        return base64.b64decode(content["base64"])
    return content.encode("utf-8")


def text_of(content: Any) -> Optional[str]:
    """The text of a file entry (``None`` for bytes, links, folders)."""
    if isinstance(content, str):
        return content
    if isinstance(content, dict) and isinstance(content.get("text"), str):
        return content["text"]
    return None


def _materialise(path: Path, content: Any) -> None:
    if isinstance(content, dict) and "dir" in content:
        path.mkdir(parents=True, exist_ok=True)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, dict) and "link" in content:
        os.symlink(content["link"], path)
        return
    with open(path, "wb") as f:
        f.write(_encode(content))
        f.flush()
        os.fsync(f.fileno())
    mode = content.get("mode") if isinstance(content, dict) else None
    os.chmod(path, int(mode, 8) if mode else _DEFAULT_MODE)


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
        staged.mkdir(parents=True)
        for rel, content in files.items():
            _materialise(staged / rel.rstrip("/"), content)
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
