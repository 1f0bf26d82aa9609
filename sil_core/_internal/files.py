"""Atomic file replacement: a reader sees the old bytes or the new ones, never half a file."""

from __future__ import annotations

import errno
import os
import secrets
import stat
from pathlib import Path

__all__ = ("atomic_write", "fsync_dir")

#: errors of a folder's fsync that only say the file system cannot sync folders
_NO_DIR_SYNC = {errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EBADF, errno.EACCES, errno.EISDIR}


def atomic_write(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data``: a temp file beside it, fsync, ``os.replace``, fsync
    of the folder. The new file keeps the mode (and, where allowed, owner and group) of
    the file it replaces; a new file gets ``0o666`` minus the umask, as ``open()`` gives."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        old = os.stat(path)
    except FileNotFoundError:
        old = None
    fd, tmp = _create_temp(path)
    try:
        with os.fdopen(fd, "wb") as f:
            if old is not None:
                _copy_mode(f.fileno(), tmp, old)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (a no-op where folders cannot be synced)."""
    if not hasattr(os, "O_DIRECTORY"):  # Windows: no fsync of a folder
        return
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as exc:
        if exc.errno in _NO_DIR_SYNC:
            return
        raise
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in _NO_DIR_SYNC:
            raise
    finally:
        os.close(fd)


def _create_temp(path: Path) -> tuple[int, str]:
    """A new, exclusive temp file beside ``path``, created with mode ``0o666`` so the
    kernel applies the umask (and a folder's default ACL) as for any new file."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        tmp = str(path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp")
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no unused temp file name", str(path.parent))


def _copy_mode(fd: int, tmp: str, old: os.stat_result) -> None:
    """Give the temp file the replaced file's owner and group (best effort: only root or
    a member of the group may) and then its mode (after chown, which may clear setgid)."""
    now = os.fstat(fd)
    if hasattr(os, "fchown") and (now.st_uid, now.st_gid) != (old.st_uid, old.st_gid):
        try:
            os.fchown(fd, old.st_uid, old.st_gid)
        except OSError:
            try:  # not root: keep at least the group, if this user belongs to it
                os.fchown(fd, -1, old.st_gid)
            except OSError:
                pass
    mode = stat.S_IMODE(old.st_mode)
    if hasattr(os, "fchmod"):
        os.fchmod(fd, mode)
    else:
        os.chmod(tmp, mode)
