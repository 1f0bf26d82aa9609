"""Content-addressed blobs: the bytes of big or binary skill files, stored once.

A skill's config dict names such a file by ``{"sha256": ..., "size": ...}``; its bytes
live once in ``<root>/<2 hex>/<62 hex>`` (the root is ``$HERMES_HOME/sil/blobs``), so a
file that did not change costs nothing in a new version. Blobs are written by a streaming
copy (hashed while copied to a temp file, fsynced, then renamed) and restored the same
way (hashed while copied, checked before the folder is swapped in): no file is ever held
in memory, and a missing or damaged blob fails the restore instead of writing a short
file. Digests of files on disk are cached by (path, device, inode, size, mtime_ns,
ctime_ns), so reading a skill whose big files did not change costs one ``stat`` each.
"""

import hashlib
import os
import threading
import time
import uuid
from collections import OrderedDict
from pathlib import Path
from typing import Iterable, Optional, Tuple

__all__ = ("BlobError", "BlobStore", "known", "prime")

CHUNK = 1 << 20
#: a blob no version references is swept only when older than this (a snapshot taken
#: before a write references blobs its version is not yet stored with)
GRACE_S = 24 * 3600.0
_MAX_CACHED = 4096
_cache: "OrderedDict[str, Tuple[tuple, str]]" = OrderedDict()
_cache_lock = threading.Lock()


class BlobError(OSError):
    """A blob a restore needs is missing or does not hold the bytes its name says."""


def _copy_hashed(src, dest: Path) -> Tuple[str, int]:
    """Stream the open file ``src`` into ``dest`` (fsynced); its SHA-256 and size."""
    h, n = hashlib.sha256(), 0
    with open(dest, "wb") as out:
        for chunk in iter(lambda: src.read(CHUNK), b""):
            h.update(chunk)
            n += len(chunk)
            out.write(chunk)
        out.flush()
        os.fsync(out.fileno())
    return h.hexdigest(), n


def _key(st: os.stat_result) -> tuple:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _cached(path: Path, st: os.stat_result) -> Optional[str]:
    with _cache_lock:
        got = _cache.get(str(path))
    return got[1] if got is not None and got[0] == _key(st) else None


def _remember(path: Path, st: os.stat_result, sha: str) -> None:
    with _cache_lock:
        _cache.pop(str(path), None)
        _cache[str(path)] = (_key(st), sha)
        while len(_cache) > _MAX_CACHED:
            _cache.popitem(last=False)


def known(path: Path) -> Optional[str]:
    """The cached digest of a file when its stat did not change since (no hashing)."""
    try:
        return _cached(path, os.stat(path, follow_symlinks=False))
    except OSError:
        return None


def prime(path: Path, sha: str) -> None:
    """Cache the digest of a file just written from a blob (a restore), so reading it back
    does not hash it again."""
    try:
        _remember(path, os.stat(path), sha)
    except OSError:
        pass


class BlobStore:
    """A folder of content-addressed blobs."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path(self, sha: str) -> Path:
        """Where the blob of ``sha`` lives."""
        return self.root / sha[:2] / sha[2:]

    def put_file(self, src: Path) -> Tuple[str, int]:
        """Store a file's bytes (once) and return ``(sha256, size)``: a stat and a cache
        look-up when it is already stored, else one streaming copy."""
        st = os.stat(src)
        sha = _cached(src, st)
        if sha is not None and self._present(sha, st.st_size):
            return sha, st.st_size
        return self._copy_in(src, st)

    def copy_out(self, sha: str, size: int, dest: Path) -> None:
        """Write the blob's bytes to ``dest`` (streamed); raise :class:`BlobError` when the
        blob is missing or its bytes are not ``sha``/``size`` (``dest`` is then partial:
        write it in a staging folder)."""
        try:
            src = open(self.path(sha), "rb")
        except FileNotFoundError:
            raise BlobError(f"blob {sha} ({size} bytes) is missing from {self.root}") from None
        with src:
            got, n = _copy_hashed(src, dest)
        if got != sha or n != size:
            raise BlobError(f"blob {sha} in {self.root} is damaged ({n} bytes, sha256 {got})")

    def sweep(self, keep: Iterable[str], grace_s: float = GRACE_S) -> Tuple[int, int]:
        """Delete the blobs not in ``keep`` (and stray temp files) older than ``grace_s``;
        returns ``(files, bytes)`` removed."""
        wanted = set(keep)
        cutoff = time.time() - grace_s
        removed = freed = 0
        if not self.root.is_dir():
            return 0, 0
        for sub in self.root.iterdir():
            if not sub.is_dir():
                continue
            for blob in sub.iterdir():
                try:
                    st = blob.stat()
                    if st.st_mtime < cutoff and (sub.name == "tmp" or sub.name + blob.name not in wanted):
                        blob.unlink()
                        removed, freed = removed + 1, freed + st.st_size
                except OSError:
                    continue
        return removed, freed

    # -- internals -------------------------------------------------------------------------
    def _present(self, sha: str, size: int) -> bool:
        """Whether the blob is stored (refreshing its mtime when old, so a sweep keeps it)."""
        path = self.path(sha)
        try:
            st = os.stat(path)
        except OSError:
            return False
        if st.st_size != size:
            return False
        if st.st_mtime < time.time() - GRACE_S / 2:
            try:
                os.utime(path)
            except OSError:
                pass
        return True

    def _copy_in(self, src: Path, st: os.stat_result) -> Tuple[str, int]:
        tmp_dir = self.root / "tmp"
        tmp_dir.mkdir(parents=True, exist_ok=True)
        tmp = tmp_dir / uuid.uuid4().hex
        try:
            with open(src, "rb") as f:
                sha, n = _copy_hashed(f, tmp)
            final = self.path(sha)
            if self._present(sha, n):
                tmp.unlink()
            else:
                final.parent.mkdir(parents=True, exist_ok=True)
                os.chmod(tmp, 0o444)
                os.replace(tmp, final)
        finally:
            if tmp.exists():
                tmp.unlink()
        if n == st.st_size and _key(os.stat(src)) == _key(st):  # not changed while copied
            _remember(src, st, sha)
        return sha, n
