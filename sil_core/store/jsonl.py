"""``jsonl:///dir``: human-readable files that many processes on one host may share.

Files in the store's directory::

    calls.jsonl       the active file: one JSON object per line (UTF-8, ensure_ascii=False)
    aggregates.json   the cell table, replaced atomically after every batch
    .lock             the lock file (fcntl.flock: exclusive to write, shared to open a read)
    archives/         rotated files, calls-<UTC %Y%m%dT%H%M%S%fZ>[-N].jsonl.gz

``calls.jsonl`` holds two kinds of line. A **record line** is
:meth:`CallRecord.to_dict` (its first key is ``"id"``). A **feedback line**,
``{"feedback": "<call id>", "success": true|false|null, "score": <float>|null}``, is
appended when late feedback arrives for a call already on disk; readers fold it into the
newest earlier record line with that id (``null`` leaves a field unchanged), so
:meth:`JsonlStore.get_call` returns the feedback and nothing is rewritten in place.
Feedback given in the same batch as its call is folded in before the record is written.
Blank lines are ignored; any other line that does not parse (a crash's torn tail, a bad
hand edit) is skipped and counted in :attr:`JsonlStore.corrupt_lines`. Reads never raise
on a bad line.

``aggregates.json`` is ``{"format": 1, "epoch": N, "calls": [st_ino, size], "cells":
CellTable.to_rows()}``. Statistics (:meth:`cells`, :meth:`stats`, :meth:`targets`) read
only this file, cached by ``(st_mtime_ns, st_size, st_ino)``: an unchanged file costs one
``stat``. Writers give each new version a strictly larger mtime so the key never repeats.
``epoch`` goes up whenever ``calls.jsonl`` is replaced (rotation, compaction, retention),
which tells other processes to drop what they cached about the old file. ``calls`` says
how much of ``calls.jsonl`` the cells include: complete lines past it were appended by a
writer killed before its aggregates update, and the next writer (or the next process to
open the store) adds them, so the cells always match the records after a crash.

A write batch, under the exclusive lock: a torn last line (no final newline) is
terminated so it is skipped as corrupt and never glued to the new data; the file is
rotated if the batch would take it past ``max_bytes``; every new line goes out in one
``write`` and one ``fdatasync``; then the batch's cell deltas are merged into
``aggregates.json`` (temp file, fsync, ``os.replace``). A plain append never re-reads the
file. Finding the current state of a call that receives feedback uses a bounded
in-process cache that is kept exact by folding in what other processes appended since
(found by byte search, not a parse of the file); on a miss the active file is searched.

Rotation renames the active file into the archive directory under the lock and gzips it
after the lock is released, so other writers do not wait for the compression. Archives
beyond ``max_archives`` are deleted, oldest first. Rotation, :meth:`compact` and
:meth:`retain` remove raw records only: the aggregates keep every call ever written, so
decisions still see the whole history.

Limits: raw reads (:meth:`read_calls`, :meth:`get_call`, :meth:`count_calls`) and
feedback look at the active file only (feedback on an archived call is ignored, as for a
record removed by retention). Duplicate call ids are dropped within a batch and against
the ids this process has cached, not against the whole file. ``aggregates.json`` is
rewritten whole on every batch, so its cost grows with the number of cells (targets x
versions x arms x hours); ``retain(max_age_s=...)`` prunes hourly cells older than the
cutoff (all-time cells stay). POSIX only (``fcntl``).
"""

from __future__ import annotations

import errno
import gzip
import json
import logging
import os
import re
import shutil
import threading
import time
import weakref
from collections import OrderedDict
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator, Sequence

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

from ..aggregates import BUCKET_S, Cell, CellKey, cells_for, feedback_delta
from ..errors import ConfigError, StoreError
from ..records import CallRecord, Feedback
from ._table import CellTable
from .base import Store
from .memory import apply_feedback, matches, retained

__all__ = ("JsonlStore",)

ACTIVE = "calls.jsonl"
AGGREGATES = "aggregates.json"
LOCK = ".lock"
FORMAT = 1
#: how many call states a process keeps for feedback look-ups
CACHE_MAX = 10_000
#: above this many bytes appended by others, drop the cache instead of scanning them
TAIL_MAX = 8 << 20

_ARCHIVE_RE = re.compile(r"^calls-(\d{8}T\d{12}Z)(?:-(\d+))?\.jsonl(\.gz)?$")
_ID_RE = re.compile(rb'^\{"id": ("(?:[^"\\]|\\.)*")')
_FEEDBACK_PREFIX = b'{"feedback": '
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_datasync = getattr(os, "fdatasync", os.fsync)
_MISSING = ("missing",)
_log = logging.getLogger(__name__)


class JsonlStore(Store):
    """Call records in ``<directory>/calls.jsonl``, aggregates in ``aggregates.json``.

    Args:
        directory: the store's directory (created if missing).
        max_bytes: rotate ``calls.jsonl`` before a batch would take it past this size;
            ``None`` never rotates by size.
        archive_dir: where rotated files go (default ``<directory>/archives``).
        max_archives: how many gzip archives to keep (newest first).
        fsync: ``fdatasync``/``fsync`` every batch and replaced file (off: faster, and a
            power loss may lose the last batches).

    Raises:
        ConfigError: ``max_bytes <= 0``, ``max_archives < 1``, or no ``fcntl``.
    """

    capabilities = frozenset({"rotation", "compaction", "multiprocess", "retention"})

    def __init__(
        self,
        directory: str | os.PathLike,
        *,
        max_bytes: int | None = None,
        archive_dir: str | os.PathLike | None = None,
        max_archives: int = 5,
        fsync: bool = True,
    ) -> None:
        if fcntl is None:  # pragma: no cover - Windows
            raise ConfigError("jsonl:// needs POSIX file locks (fcntl); use sqlite:// on this platform")
        if max_bytes is not None and (isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes <= 0):
            raise ConfigError(f"max_bytes must be a positive int or None, not {max_bytes!r}")
        if isinstance(max_archives, bool) or not isinstance(max_archives, int) or max_archives < 1:
            raise ConfigError(f"max_archives must be an int >= 1, not {max_archives!r}")
        self.directory = Path(directory)
        self.url = f"jsonl:///{self.directory}"
        self.max_bytes = max_bytes
        self.max_archives = max_archives
        self.fsync = bool(fsync)
        self.archive_dir = Path(archive_dir) if archive_dir is not None else self.directory / "archives"
        self.calls_path = self.directory / ACTIVE
        self.aggregates_path = self.directory / AGGREGATES
        self.lock_path = self.directory / LOCK
        #: corrupt lines seen by the last full read (read_calls, count_calls, compact, retain)
        self.corrupt_lines = 0
        self._lock_fd = -1
        with self._errors():
            self.directory.mkdir(parents=True, exist_ok=True)
            self._lock_fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | _O_CLOEXEC, 0o644)
        self._mutex = threading.Lock()
        self._pid = os.getpid()
        self._table = CellTable()
        self._epoch = 0
        self._covered: tuple | None = None  # (st_ino, size) of calls.jsonl the cells include
        self._agg_key: tuple = ()
        # id -> current state of calls in the active file; exact for bytes [0, _idx_off)
        # of the file identified by _idx = (st_dev, st_ino, epoch)
        self._cache: OrderedDict[str, CallRecord] = OrderedDict()
        self._idx: tuple | None = None
        self._idx_off = 0
        _STORES.add(self)
        with self._errors(), self._locked(exclusive=True):
            try:
                self._repair_locked()
            except _CorruptAggregates:
                pass  # reads say so; rebuild_aggregates() repairs it

    # -- locking -------------------------------------------------------------------------
    @contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except OSError as exc:
            raise StoreError(f"{self.url}: {exc}") from exc

    @contextmanager
    def _locked(self, exclusive: bool) -> Iterator[None]:
        """This process's threads, then other processes (flock on ``.lock``)."""
        with self._mutex:
            if self._lock_fd < 0:
                raise StoreError(f"{self.url}: the store is closed")
            if self._pid != os.getpid():
                # a forked child shares the parent's open file description, and with it
                # the flock: take a lock file description of our own
                old, self._lock_fd = self._lock_fd, -1
                os.close(old)
                self._lock_fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | _O_CLOEXEC, 0o644)
                self._pid = os.getpid()
            fd = self._lock_fd
            fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            try:
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)

    def close(self) -> None:
        with self._mutex:
            if self._lock_fd >= 0:
                os.close(self._lock_fd)
                self._lock_fd = -1
        _STORES.discard(self)

    def __del__(self) -> None:
        if getattr(self, "_lock_fd", -1) >= 0:
            try:
                os.close(self._lock_fd)
            except OSError:
                pass

    # -- aggregates ----------------------------------------------------------------------
    def _current_table(self) -> CellTable:
        """The cell table on disk, parsed only when its stat key changed (mutex held)."""
        try:
            st = os.stat(self.aggregates_path)
        except FileNotFoundError:
            if self._agg_key != _MISSING:
                self._table, self._epoch, self._covered, self._agg_key = CellTable(), 0, None, _MISSING
            return self._table
        if (st.st_mtime_ns, st.st_size, st.st_ino) == self._agg_key:
            return self._table
        try:
            with open(self.aggregates_path, "rb") as f:
                st = os.fstat(f.fileno())
                data = f.read()
        except FileNotFoundError:  # deleted by hand since the stat
            self._table, self._epoch, self._covered, self._agg_key = CellTable(), 0, None, _MISSING
            return self._table
        try:
            obj = json.loads(data)
            table, epoch = CellTable.from_rows(obj["cells"]), int(obj["epoch"])
            covered = obj.get("calls")
            covered = None if covered is None else (int(covered[0]), int(covered[1]))
        except (ValueError, KeyError, TypeError, AttributeError, IndexError) as exc:
            raise _CorruptAggregates(
                f"{self.url}: {self.aggregates_path} is corrupt ({exc}); JsonlStore.rebuild_aggregates() "
                "recomputes it from calls.jsonl and the archives"
            ) from exc
        self._table, self._epoch, self._covered = table, epoch, covered
        self._agg_key = (st.st_mtime_ns, st.st_size, st.st_ino)
        return table

    def _save_table(self, table: CellTable, epoch: int, covered: tuple[int, int] | None) -> None:
        """Replace aggregates.json atomically (exclusive lock held).

        ``covered`` is the ``(st_ino, size)`` of calls.jsonl whose every line the cells
        include: lines past it were appended by a writer that died before this step, and
        :meth:`_repair_locked` adds them.
        """
        obj = {"format": FORMAT, "epoch": epoch, "calls": covered, "cells": table.to_rows()}
        payload = json.dumps(obj, separators=(",", ":")).encode()
        tmp = self.directory / f".{AGGREGATES}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | _O_CLOEXEC, 0o644)
            try:
                _write_all(fd, payload)
                # a strictly larger mtime than the file it replaces: the cache key never repeats
                prev = self._agg_key[0] if len(self._agg_key) == 3 else 0
                ns = max(time.time_ns(), prev + 1)
                os.utime(fd, ns=(ns, ns))
                if self.fsync:
                    os.fsync(fd)
                st = os.fstat(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self.aggregates_path)
        except BaseException:
            self._agg_key = ()  # the cached table may hold deltas that did not reach the disk
            raise
        self._table, self._epoch, self._covered = table, epoch, covered
        self._agg_key = (st.st_mtime_ns, st.st_size, st.st_ino)

    def _repair_locked(self) -> None:
        """Add the lines of a writer that died between its append and its aggregates
        update (exclusive lock held; run on open)."""
        table = self._current_table()
        try:
            fd = os.open(self.calls_path, os.O_RDONLY | _O_CLOEXEC)
        except FileNotFoundError:
            return
        try:
            st = os.fstat(fd)
            if _recover(fd, st, self._covered, table):
                self._save_table(table, self._epoch, (st.st_ino, st.st_size))
        finally:
            os.close(fd)

    def cells(self, target: str, *, version: str | None = None, since_hour: int | None = None) -> dict[tuple[str, str], Cell]:
        # aggregates.json is only ever replaced whole, so reading it needs no file lock
        with self._mutex, self._errors():
            return self._current_table().read(target, version, since_hour)

    def targets(self) -> list[str]:
        with self._mutex, self._errors():
            return self._current_table().targets()

    # -- writes ----------------------------------------------------------------------------
    def write(self, calls: Sequence[CallRecord], feedback: Sequence[Feedback] = ()) -> None:
        if not calls and not feedback:
            return
        with self._errors():
            with self._locked(exclusive=True):
                try:
                    pending = self._write_locked(calls, feedback)
                except BaseException:
                    self._agg_key = ()  # the cached table may hold cells that are not on disk
                    raise
        if pending is not None:
            try:
                self._finish_rotation(pending)
            except (OSError, StoreError) as exc:  # the batch is stored; a later rotation retries
                _log.warning("%s: compressing archive %s failed: %s", self.url, pending, exc)

    def _write_locked(self, calls: Sequence[CallRecord], feedback: Sequence[Feedback]) -> Path | None:
        table = self._current_table()
        epoch = self._epoch
        batch = {r.id: r for r in calls}
        pending = None
        fd = os.open(self.calls_path, os.O_RDWR | os.O_APPEND | os.O_CREAT | _O_CLOEXEC, 0o644)
        try:
            st = os.fstat(fd)
            size = st.st_size
            torn = size > 0 and os.pread(fd, 1, size - 1) != b"\n"
            self._sync_index(fd, (st.st_dev, st.st_ino, epoch), size)
            repaired = _recover(fd, st, self._covered, table)
            for cid in [cid for cid in batch if cid in self._cache]:
                del batch[cid]  # already stored: a retried batch must not count twice
            wanted = {fb.call_id for fb in feedback if fb.call_id not in batch and fb.call_id not in self._cache}
            states = _lookup(_pread_all(fd, size), wanted) if wanted else {}
            deltas: dict[CellKey, Cell] = {}
            fb_lines = []
            for fb in feedback:
                cid = fb.call_id
                if cid in batch:
                    batch[cid] = apply_feedback(batch[cid], fb)
                    continue
                before = states.get(cid)
                if before is None:
                    before = self._cache.get(cid)
                if before is None:
                    continue  # unknown (or archived) call: ignored
                after = apply_feedback(before, fb)
                if after != before:
                    states[cid] = after
                    _merge(deltas, feedback_delta(before, after))
                    fb_lines.append(_encode_feedback(fb))
            body = b"".join([*map(_encode_record, batch.values()), *fb_lines])
            if not body:
                if repaired:
                    self._save_table(table, epoch, (st.st_ino, size))
                return None
            _merge(deltas, cells_for(batch.values()))
            if self.max_bytes is not None and size > 0 and size + torn + len(body) > self.max_bytes:
                if torn:
                    _write_all(fd, b"\n")
                os.close(fd)
                fd = -1
                pending = self._rotate_locked()
                epoch += 1
                fd = os.open(self.calls_path, os.O_RDWR | os.O_APPEND | os.O_CREAT | _O_CLOEXEC, 0o644)
                st = os.fstat(fd)
                size, torn, states = 0, False, {}
                self._sync_index(fd, (st.st_dev, st.st_ino, epoch), 0)
                # the new, empty file is covered before anything is appended to it
                self._save_table(table, epoch, (st.st_ino, 0))
            data = b"\n" + body if torn else body
            _write_all(fd, data)
            if self.fsync:
                _datasync(fd)
            self._idx_off = size + len(data)
            self._remember([*batch.values(), *states.values()])
        finally:
            if fd >= 0:
                os.close(fd)
        table.apply(deltas)
        self._save_table(table, epoch, (st.st_ino, self._idx_off))
        return pending

    def _sync_index(self, fd: int, ident: tuple, size: int) -> None:
        """Bring the call cache up to ``size`` bytes of the active file (lock held)."""
        if ident != self._idx or size < self._idx_off:
            self._cache.clear()
            self._idx, self._idx_off = ident, size
            return
        if size == self._idx_off:
            return
        if size - self._idx_off > TAIL_MAX:
            self._cache.clear()
        elif self._cache:
            _fold_tail(_pread_all(fd, size - self._idx_off, self._idx_off), self._cache)
        self._idx_off = size

    def _remember(self, records: list[CallRecord]) -> None:
        cache = self._cache
        for r in records:
            cache[r.id] = r
            cache.move_to_end(r.id)
        while len(cache) > CACHE_MAX:
            cache.popitem(last=False)

    # -- rotation --------------------------------------------------------------------------
    def rotate(self, force: bool = False) -> Path | None:
        """Archive the active file if it is past ``max_bytes`` (or non-empty, with ``force``).

        Returns the new ``.jsonl.gz`` archive, or ``None`` when nothing was rotated.
        Aggregates are untouched.
        """
        with self._errors():
            with self._locked(exclusive=True):
                try:
                    size = os.stat(self.calls_path).st_size
                except FileNotFoundError:
                    return None
                if size == 0 or not (force or (self.max_bytes is not None and size > self.max_bytes)):
                    return None
                self._repair_locked()  # count a dead writer's lines before archiving them
                fd = os.open(self.calls_path, os.O_RDWR | os.O_APPEND | _O_CLOEXEC)
                try:
                    if os.pread(fd, 1, size - 1) != b"\n":
                        _write_all(fd, b"\n")
                finally:
                    os.close(fd)
                table = self._current_table()
                pending = self._rotate_locked()
                fd = os.open(self.calls_path, os.O_WRONLY | os.O_CREAT | _O_CLOEXEC, 0o644)
                try:
                    ino = os.fstat(fd).st_ino
                finally:
                    os.close(fd)
                self._save_table(table, self._epoch + 1, (ino, 0))
                self._idx = None
            return self._finish_rotation(pending)

    def _rotate_locked(self) -> Path:
        """Move the active file into the archive directory (exclusive lock held).

        Returns the uncompressed ``.jsonl`` to gzip after the lock is released, or the
        final ``.jsonl.gz`` when the archive directory is on another file system.
        """
        self.archive_dir.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
        n = 0
        while True:
            base = self.archive_dir / (f"calls-{stamp}-{n}" if n else f"calls-{stamp}")
            pending, final = base.with_name(base.name + ".jsonl"), base.with_name(base.name + ".jsonl.gz")
            if not pending.exists() and not final.exists():
                break
            n += 1
        try:
            os.rename(self.calls_path, pending)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            self._gzip(self.calls_path, final)
            os.unlink(self.calls_path)
            return final
        if self.fsync:
            _fsync_dir(self.archive_dir)
            _fsync_dir(self.directory)
        return pending

    def _finish_rotation(self, path: Path) -> Path:
        """Gzip a renamed active file (and any left by a crash), then prune archives."""
        final = path
        if path.suffix == ".jsonl":
            final = self._gzip(path, path.with_name(path.name + ".gz"))
            for name in os.listdir(self.archive_dir):
                m = _ARCHIVE_RE.match(name)
                if m and not m.group(3) and name != path.name:
                    self._gzip(self.archive_dir / name, self.archive_dir / (name + ".gz"))
        with self._locked(exclusive=True):
            self._prune_locked()
        return final

    def _gzip(self, source: Path, final: Path) -> Path:
        tmp = final.with_name(f".{final.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        try:
            src = open(source, "rb")
        except FileNotFoundError:
            return final  # another process compressed it
        with src, open(tmp, "wb") as raw:
            with gzip.GzipFile(filename=source.name, mode="wb", fileobj=raw, compresslevel=6, mtime=0) as gz:
                shutil.copyfileobj(src, gz, 1 << 20)
            raw.flush()
            if self.fsync:
                os.fsync(raw.fileno())
        os.replace(tmp, final)
        if source.parent == final.parent:
            try:
                os.unlink(source)
            except FileNotFoundError:
                pass
        if self.fsync:
            _fsync_dir(final.parent)
        return final

    def _prune_locked(self) -> None:
        archives = []
        for name in os.listdir(self.archive_dir):
            m = _ARCHIVE_RE.match(name)
            if m and m.group(3):
                archives.append((m.group(1), int(m.group(2) or 0), name))
        archives.sort()
        for *_, name in archives[: -self.max_archives]:
            try:
                os.unlink(self.archive_dir / name)
            except FileNotFoundError:
                pass

    def archives(self, *, pending: bool = False) -> list[Path]:
        """The gzip archives, oldest first (with ``pending``, also rotated files not
        compressed yet, where no ``.gz`` of the same name exists)."""
        try:
            names = set(os.listdir(self.archive_dir))
        except FileNotFoundError:
            return []
        found = []
        for name in names:
            m = _ARCHIVE_RE.match(name)
            if m and (m.group(3) or (pending and name + ".gz" not in names)):
                found.append((m.group(1), int(m.group(2) or 0), self.archive_dir / name))
        return [p for *_, p in sorted(found)]

    # -- rewrites: compaction and retention -------------------------------------------------
    def compact(self, max_entries: int) -> int:
        """Keep the newest ``max_entries`` records per target in the active file.

        Corrupt lines are dropped and feedback lines folded into their records. Returns
        how many valid records were removed. Aggregates are untouched.
        """
        if isinstance(max_entries, bool) or not isinstance(max_entries, int) or max_entries < 0:
            raise ConfigError(f"max_entries must be an int >= 0, not {max_entries!r}")
        return self._rewrite(lambda rows: retained(rows, None, max_entries, 0.0))

    def retain(self, *, max_age_s: float | None = None, max_calls: int | None = None, now: float | None = None) -> int:
        """Drop records older than ``max_age_s`` and beyond the newest ``max_calls`` per
        target from the active file, and hourly cells older than the age cutoff.

        All-time cells stay, so whole-history statistics are unchanged. Returns how many
        records were removed.
        """
        now = time.time() if now is None else now
        prune_before = None if max_age_s is None else int((now - max_age_s) // BUCKET_S)
        return self._rewrite(lambda rows: retained(rows, max_age_s, max_calls, now), prune_before)

    def _rewrite(self, choose: Callable[[list[CallRecord]], list[CallRecord]], prune_before: int | None = None) -> int:
        with self._errors(), self._locked(exclusive=True):
            try:
                return self._rewrite_locked(choose, prune_before)
            except BaseException:
                self._agg_key = ()  # the cached table may have been pruned without being saved
                raise

    def _rewrite_locked(self, choose: Callable[[list[CallRecord]], list[CallRecord]], prune_before: int | None) -> int:
        try:
            with open(self.calls_path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            data = b""
        records, self.corrupt_lines = _fold(data)
        keep = {r.id for r in choose(list(records.values()))}
        removed = len(records) - len(keep)
        table = self._current_table()
        if self._covered is not None and self._covered[1] < len(data):
            self._repair_locked()  # count a dead writer's lines before dropping any
            table = self._current_table()
        pruned = table.prune_hours(prune_before) if prune_before is not None else 0
        if removed == 0 and self.corrupt_lines == 0 and not pruned:
            return 0
        epoch = self._epoch
        if removed or self.corrupt_lines:
            body = b"".join(_encode_record(r) for r in records.values() if r.id in keep)
            tmp = self.directory / f".{ACTIVE}.tmp"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | _O_CLOEXEC, 0o644)
            try:
                _write_all(fd, body)
                if self.fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self.calls_path)
            if self.fsync:
                _fsync_dir(self.directory)
            epoch += 1
            self._idx = None
            covered = (os.stat(self.calls_path).st_ino, len(body))
        else:
            covered = self._covered
        self._save_table(table, epoch, covered)
        return removed

    def rebuild_aggregates(self) -> int:
        """Recompute ``aggregates.json`` from the archives and the active file.

        For recovery only (a corrupt or lost aggregates file): records already removed by
        retention, compaction or archive pruning are missing from the result. Returns the
        number of records counted.
        """
        with self._errors(), self._locked(exclusive=True):
            records: dict[str, CallRecord] = {}
            covered = None
            for path in [*self.archives(pending=True), self.calls_path]:
                try:
                    opener = gzip.open if path.suffix == ".gz" else open
                    with opener(path, "rb") as f:
                        data = f.read()
                        if path == self.calls_path:
                            covered = (os.fstat(f.fileno()).st_ino, len(data))
                except FileNotFoundError:
                    continue
                _fold(data, records)
            table = CellTable()
            table.apply(cells_for(records.values()))
            try:
                self._current_table()
            except StoreError:
                pass
            self._save_table(table, self._epoch + 1, covered)
            self._idx = None
            return len(records)

    # -- reads -----------------------------------------------------------------------------
    def _snapshot(self) -> bytes:
        """The active file's bytes as of a moment when no write was under way.

        The shared lock is held only to open the file and take its size: the file is only
        ever appended to or replaced, so those bytes cannot change afterwards.
        """
        with self._errors():
            with self._locked(exclusive=False):
                try:
                    f = open(self.calls_path, "rb")
                except FileNotFoundError:
                    return b""
                size = os.fstat(f.fileno()).st_size
            with f:
                return f.read(size)

    def read_calls(self, target=None, *, since=None, until=None, version=None, limit=1000) -> list[CallRecord]:
        """The newest ``limit`` matching records of the **active file**, oldest first.

        Archived (rotated) records are not read; their evidence stays in the aggregates.
        """
        records, self.corrupt_lines = _fold(self._snapshot())
        rows = [r for r in records.values() if matches(r, target, since, until, version)]
        rows.sort(key=lambda r: (r.ts, r.id))
        return rows[-limit:] if limit else []

    def get_call(self, call_id: str) -> CallRecord | None:
        """One record of the active file by id (with its feedback), or ``None``."""
        return _lookup(self._snapshot(), {call_id}).get(call_id)

    def count_calls(self, target: str | None = None) -> int:
        """How many records the active file holds, for one or all targets."""
        records, self.corrupt_lines = _fold(self._snapshot())
        if target is None:
            return len(records)
        return sum(1 for r in records.values() if r.target == target)


# -- line codec ------------------------------------------------------------------------------
def _encode_record(r: CallRecord) -> bytes:
    # backslashreplace turns a lone surrogate into a \\udXXX escape that JSON reads back
    return (json.dumps(r.to_dict(), ensure_ascii=False) + "\n").encode("utf-8", "backslashreplace")


def _encode_feedback(fb: Feedback) -> bytes:
    line = {"feedback": fb.call_id, "success": fb.success, "score": fb.score}
    return (json.dumps(line, ensure_ascii=False) + "\n").encode("utf-8", "backslashreplace")


def _parse_line(line: bytes) -> CallRecord | Feedback | None:
    """A record or a feedback line, or ``None`` for a corrupt line."""
    try:
        obj = json.loads(line)
    except (ValueError, RecursionError):
        return None
    if not isinstance(obj, dict):
        return None
    if "feedback" in obj and "target" not in obj:
        cid, success, score = obj["feedback"], obj.get("success"), obj.get("score")
        if not isinstance(cid, str) or not (success is None or isinstance(success, bool)):
            return None
        if score is not None and (isinstance(score, bool) or not isinstance(score, (int, float))):
            return None
        return Feedback(cid, success, score)
    try:
        return CallRecord.from_dict(obj)
    except (KeyError, ValueError, TypeError, OverflowError):
        return None


def _fold(data: bytes, records: dict[str, CallRecord] | None = None) -> tuple[dict[str, CallRecord], int]:
    """Every record of a file's bytes with its feedback folded in, and the corrupt count.

    A last line without its newline is a torn write: corrupt.
    """
    records = {} if records is None else records
    lines = data.split(b"\n")
    corrupt = 1 if lines.pop().strip() else 0
    for line in lines:
        if not line.strip():
            continue
        item = _parse_line(line)
        if item is None:
            corrupt += 1
        elif isinstance(item, Feedback):
            before = records.get(item.call_id)
            if before is not None:
                records[item.call_id] = apply_feedback(before, item)
        else:
            records[item.id] = item
    return records, corrupt


def _lookup(data: bytes, ids: set[str]) -> dict[str, CallRecord]:
    """The current state of some calls, parsing only the lines that mention them."""
    found: dict[str, CallRecord] = {}
    slow = set()
    for cid in ids:
        needle = json.dumps(cid, ensure_ascii=False).encode("utf-8", "backslashreplace")
        if not needle.isascii() or b"\\" in needle:
            slow.add(cid)  # may be spelt with other escapes: parse everything
            continue
        record = None
        pos = data.find(needle)
        while pos != -1:
            start = data.rfind(b"\n", 0, pos) + 1
            end = data.find(b"\n", pos)
            if end == -1:
                break  # a torn last line
            item = _parse_line(data[start:end])
            if isinstance(item, CallRecord) and item.id == cid:
                record = item
            elif isinstance(item, Feedback) and item.call_id == cid and record is not None:
                record = apply_feedback(record, item)
            pos = data.find(needle, end)
        if record is not None:
            found[cid] = record
    if slow:
        records, _ = _fold(data)
        found.update((cid, records[cid]) for cid in slow if cid in records)
    return found


def _fold_tail(tail: bytes, cache: OrderedDict[str, CallRecord]) -> None:
    """Fold lines other processes appended into the cached states they touch."""
    lines = tail.split(b"\n")
    lines.pop()  # incomplete: a torn line the next write terminates
    for line in lines:
        if line.startswith(_FEEDBACK_PREFIX):
            item = _parse_line(line)
        else:
            m = _ID_RE.match(line)
            if m is not None:
                try:
                    if json.loads(m.group(1)) not in cache:
                        continue
                except ValueError:
                    continue
            item = _parse_line(line)
        if isinstance(item, Feedback):
            before = cache.get(item.call_id)
            if before is not None:
                cache[item.call_id] = apply_feedback(before, item)
        elif isinstance(item, CallRecord) and item.id in cache:
            cache[item.id] = item


def _recover(fd: int, st: os.stat_result, covered: tuple[int, int] | None, table: CellTable) -> bool:
    """Apply the cells of complete lines past ``covered`` in the open active file.

    Normally there are none: only a writer killed between its append and its aggregates
    update leaves some. A file of another inode (replaced, or restored from a copy) is
    taken as covered.
    """
    if covered is None or covered[0] != st.st_ino or covered[1] >= st.st_size:
        return False
    data = _pread_all(fd, st.st_size)
    start = covered[1]
    deltas: dict[CellKey, Cell] = {}
    states: dict[str, CallRecord] = {}
    for line in data[start:].split(b"\n")[:-1]:
        item = _parse_line(line) if line.strip() else None
        if isinstance(item, CallRecord):
            states[item.id] = item
            _merge(deltas, cells_for([item]))
        elif isinstance(item, Feedback):
            before = states.get(item.call_id)
            if before is None:
                before = _lookup(data[:start], {item.call_id}).get(item.call_id)
            if before is not None:
                states[item.call_id] = after = apply_feedback(before, item)
                _merge(deltas, feedback_delta(before, after))
    table.apply(deltas)
    return True


class _CorruptAggregates(StoreError):
    pass


# -- small file helpers ----------------------------------------------------------------------
def _merge(into: dict[CellKey, Cell], deltas: dict[CellKey, Cell]) -> None:
    for key, cell in deltas.items():
        if key in into:
            into[key].add(cell)
        else:
            into[key] = cell


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _pread_all(fd: int, size: int, offset: int = 0) -> bytes:
    chunks = []
    while size > 0:
        chunk = os.pread(fd, size, offset)
        if not chunk:
            break
        chunks.append(chunk)
        size -= len(chunk)
        offset += len(chunk)
    return b"".join(chunks)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | _O_CLOEXEC)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


_STORES: "weakref.WeakSet[JsonlStore]" = weakref.WeakSet()


def _reinit_after_fork() -> None:
    # another thread may have held a store's mutex at the fork: the child needs new ones
    # (the lock file is reopened on first use, see JsonlStore._locked)
    for store in list(_STORES):
        store._mutex = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reinit_after_fork)
