"""A skill folder as a dict of files, read whole and replaced atomically.

Files map relative POSIX paths to their text (UTF-8), or to a digest entry for big or
binary files (below), so the dict is JSON and restores byte for byte. What a plain
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

Big files (over ``INLINE_MAX`` bytes, SKILL.md excepted) and files that are not UTF-8
are not held in the dict: an entry ``{"sha256": ..., "size": ...}`` (plus ``"mode"``)
names their bytes in a :class:`~._blobs.BlobStore`, written by a streaming copy when the
dict is read and streamed back into the staging folder by a restore. Older entries
(``{"base64": ...}``) still restore, and :func:`canonical` compares them to the disk.

:func:`find_skill_dir` finds a skill's folder the way Hermes' ``skill_manage`` does
(``_find_skill``): the local skills folder, then ``skills.external_dirs`` in config
order; in each, the first folder (depth first, in directory order, symlinked folders not
followed, Hermes' excluded and support folders skipped) named ``name`` with a SKILL.md.
"""

import base64
import ctypes
import hashlib
import os
import shutil
import stat
import uuid
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Union

from ._blobs import BlobStore, known, prime

__all__ = ("canonical", "external_dirs", "find_skill_dir", "read_files", "replace_dir", "text_of")

FileContent = Union[str, Dict[str, str]]
_SKIP_DIRS = {"__pycache__", ".git"}
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
_DEFAULT_MODE = 0o644
_EXEC = 0o111
#: files larger than this (SKILL.md excepted) are blobs, not inline text
INLINE_MAX = 256 * 1024
#: Hermes' ``agent.skill_utils.EXCLUDED_SKILL_DIRS`` and ``SKILL_SUPPORT_DIRS`` (0.19.0)
_EXCLUDED = frozenset((".git", ".github", ".hub", ".archive", ".venv", "venv", "node_modules", "site-packages",
                       "__pycache__", ".tox", ".nox", ".pytest_cache", ".mypy_cache", ".ruff_cache"))
_SUPPORT = frozenset(("references", "templates", "assets", "scripts"))


def external_dirs(home: Path, doc: Any) -> List[Path]:
    """``skills.external_dirs`` of a parsed ``config.yaml`` as Hermes resolves them
    (``get_external_skills_dirs``): ``~`` and ``$VARS`` expanded, relative to the home,
    existing folders only, without duplicates or the local skills folder."""
    raw = (doc.get("skills") or {}).get("external_dirs") if isinstance(doc, dict) else None
    if isinstance(doc, dict) and not isinstance(doc.get("skills") or {}, dict):
        raw = None
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, list):
        return []
    local = (home / "skills").resolve()
    out: List[Path] = []
    for entry in raw:
        text = str(entry).strip()
        if not text:
            continue
        path = Path(os.path.expanduser(os.path.expandvars(text)))
        path = (home / path).resolve() if not path.is_absolute() else path.resolve()
        if path != local and path not in out and path.is_dir():
            out.append(path)
    return out


def _first_named(root: Path, name: str) -> Optional[Path]:
    """The first folder under ``root`` named ``name`` with a SKILL.md, in Hermes' order."""
    stack = [root]
    while stack:
        folder = stack.pop()
        if folder.name == name and (folder / "SKILL.md").exists():
            return folder
        try:
            with os.scandir(folder) as it:
                entries = list(it)
        except OSError:
            continue
        has_skill = any(e.name == "SKILL.md" for e in entries)
        subdirs = [Path(e.path) for e in entries if e.name not in _EXCLUDED and not (has_skill and e.name in _SUPPORT)
                   and _is_real_dir(e)]
        stack.extend(reversed(subdirs))  # depth first, in directory order
    return None


def _is_real_dir(entry: "os.DirEntry[str]") -> bool:
    try:
        return entry.is_dir() and not entry.is_symlink()
    except OSError:
        return False


def find_skill_dir(roots: Iterable[Path], name: str) -> Optional[Path]:
    """The folder Hermes' ``skill_manage`` edits for skill ``name``: the first match in
    the first root that has one (local skills folder first, then external dirs); else a
    symlinked ``<root>/<name>`` (``skill_view`` loads it, ``skill_manage`` never finds it)."""
    if not name or name in (".", "..") or "/" in name:
        return None
    roots = [r for r in roots if r.is_dir() and not any(part in _EXCLUDED for part in r.parts)]
    for root in roots:
        found = _first_named(root, name)
        if found is not None:
            return found
    for root in roots:
        if (root / name / "SKILL.md").is_file():
            return root / name
    return None


def read_files(folder: Optional[Path], blobs: Optional[BlobStore] = None) -> Dict[str, FileContent]:
    """Every file, symlink and empty folder under ``folder`` (``{}`` when it does not
    exist); big or binary files are stored in ``blobs`` and named by digest (inline
    base64 without ``blobs``)."""
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
            st = path.stat()
            mode = stat.S_IMODE(st.st_mode)
            entry: Any = None
            if blobs is None or st.st_size <= INLINE_MAX or rel == "SKILL.md":
                raw = path.read_bytes()
                try:
                    text = raw.decode("utf-8")
                    entry = {"text": text} if mode & _EXEC else text
                except UnicodeDecodeError:
                    if blobs is None:
                        entry = {"base64": base64.b64encode(raw).decode("ascii")}
            if entry is None:
                sha, size = blobs.put_file(path)  # type: ignore[union-attr]
                entry = {"sha256": sha, "size": size}
            if mode & _EXEC:
                entry["mode"] = format(mode, "04o")
            files[rel] = entry
    return files


def canonical(files: Dict[str, Any]) -> Dict[str, Any]:
    """``files`` as :func:`read_files` with blobs would give them: an older inline entry
    (base64, or text over ``INLINE_MAX``) becomes its digest entry (for comparisons)."""
    out: Dict[str, Any] = {}
    for rel, entry in files.items():
        if isinstance(entry, dict) and ("link" in entry or "dir" in entry or "sha256" in entry):
            out[rel] = entry
            continue
        raw = _encode(entry)
        text = text_of(entry)
        if text is None or (len(raw) > INLINE_MAX and rel != "SKILL.md"):
            new: Any = {"sha256": hashlib.sha256(raw).hexdigest(), "size": len(raw)}
        else:
            new = {"text": text} if isinstance(entry, dict) and entry.get("mode") else text
        if isinstance(entry, dict) and entry.get("mode"):
            new["mode"] = entry["mode"]
        out[rel] = new
    return out


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


def _link_same(path: Path, content: Dict[str, Any], current: Path) -> bool:
    """Hard-link ``current`` (the live file) as ``path`` when it already holds exactly the
    entry's bytes and mode (its digest known from the read that precedes every write): an
    unchanged big file is not copied again."""
    try:
        st = os.lstat(current)
        want = int(content["mode"], 8) if content.get("mode") else _DEFAULT_MODE
        if not stat.S_ISREG(st.st_mode) or stat.S_IMODE(st.st_mode) != want or st.st_size != int(content["size"]) \
                or known(current) != content["sha256"]:
            return False
        os.link(current, path)
        return True
    except (OSError, ValueError):
        return False


def _materialise(path: Path, content: Any, blobs: Optional[BlobStore], current: Optional[Path] = None) -> None:
    if isinstance(content, dict) and "dir" in content:
        path.mkdir(parents=True, exist_ok=True)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, dict) and "link" in content:
        os.symlink(content["link"], path)
        return
    if isinstance(content, dict) and "sha256" in content:
        if current is not None and _link_same(path, content, current):
            return
        if blobs is None:
            raise ValueError(f"{path.name}: a blob entry needs a blob store")
        blobs.copy_out(content["sha256"], int(content["size"]), path)
    else:
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


def _staging(dest: Path, staging_root: Path) -> Path:
    """``staging_root``, or a hidden folder beside ``dest`` when the two are on different
    file systems (an external skills dir): a rename cannot cross file systems."""
    staging_root.mkdir(parents=True, exist_ok=True)
    parent = dest.parent
    parent.mkdir(parents=True, exist_ok=True)
    if os.stat(parent).st_dev == os.stat(staging_root).st_dev:
        return staging_root
    beside = parent / ".sil-staging"
    beside.mkdir(exist_ok=True)
    return beside


def replace_dir(dest: Path, files: Dict[str, FileContent], staging_root: Path,
                blobs: Optional[BlobStore] = None) -> None:
    """Make ``dest`` hold exactly ``files`` (remove it when ``files`` is empty),
    atomically; blob entries are streamed from ``blobs`` (a missing or damaged blob
    raises :class:`~._blobs.BlobError` and leaves ``dest`` untouched)."""
    staging_root = _staging(dest, staging_root)
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
        for rel in sorted(files, key=lambda r: r == "SKILL.md"):  # SKILL.md last
            _materialise(staged / rel.rstrip("/"), files[rel], blobs, dest / rel)
        if not dest.exists():
            os.rename(staged, dest)
        elif _exchange(staged, dest):  # staged now holds the old folder
            shutil.rmtree(staged, ignore_errors=True)
        else:
            os.rename(dest, old)
            os.rename(staged, dest)
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if staged.exists():
            shutil.rmtree(staged, ignore_errors=True)
        if staging_root.name == ".sil-staging":  # the hidden one beside an external skill
            try:
                staging_root.rmdir()
            except OSError:
                pass
    for rel, content in files.items():
        if isinstance(content, dict) and "sha256" in content:
            prime(dest / rel, content["sha256"])
