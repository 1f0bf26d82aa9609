"""``jsonl:///dir``: human-readable files that many processes on one host may share.

Files in the store's directory (their format: :mod:`sil_core.store._jsonl_format`)::

    calls.jsonl       the active file: record lines, and feedback lines for late feedback
    aggregates.json   the cell table, replaced atomically after every batch
    pending.json      feedback for calls not written yet, replaced atomically when it changes
    state.json        the state rows (versions, changes, heads), replaced atomically on write
    trail.jsonl       the trail: one hash-chained event per line, append-only
    .lock             the lock file (fcntl.flock: exclusive to write, shared to open a read)
    archives/         rotated files, calls-<UTC %Y%m%dT%H%M%S%fZ>[-N].jsonl.gz

Nothing is rewritten in place: late feedback is appended as a line that readers fold into
its record. Lines that do not parse are skipped and counted in
:attr:`JsonlStore.corrupt_lines`; reads never raise on a bad line. Statistics
(:meth:`cells`, :meth:`stats`, :meth:`targets`) read only ``aggregates.json``, cached by
``(st_mtime_ns, st_size, st_ino)`` (writers give each version a strictly larger mtime), so
an unchanged file costs one ``stat``.

A write batch, under the exclusive lock: a torn last line (no final newline) is
terminated so it is skipped as corrupt and never glued to the new data; the file is
rotated if the batch would take it past ``max_bytes``; every new line goes out in one
``write`` and one ``fdatasync``; then the batch's cell deltas are merged into
``aggregates.json``. A plain append never re-reads the file. The current state of a call
that receives feedback comes from a bounded in-process cache, kept exact by folding in
what other processes appended since (found by byte search, not a parse); on a miss the
active file is searched. A writer killed between its append and its aggregates update
leaves lines past the ``calls`` mark of ``aggregates.json``: the next writer (or the next
process to open the store) adds them, so the cells always match the records.

Feedback for a call that is not in the active file (not written yet, as far as the
writer can tell) waits in ``pending.json``; the batch that writes the call folds it into
the record line (so the record's first contribution to the cells includes it) and drops
the entry. Per field, the feedback given last (``Feedback.ts``) wins. Entries received more
than ``pending_max_age_s`` ago are never applied and are dropped, with the oldest beyond
``pending_max``, whenever the file is rewritten.

Every wait for the file lock is bounded: the lock is polled (``LOCK_NB``, short sleeps)
for at most ``lock_timeout_s`` (10 s by default), then :class:`~sil_core.errors.StoreError`
is raised, which the Guard's writer retries later.

Rotation renames the active file into the archive directory under the lock and gzips it
after the lock is released. Archives beyond ``max_archives`` are deleted, oldest first.
Rotation, :meth:`compact` and :meth:`retain` remove raw records only: all-time cells keep
every call ever written. Hourly cells older than ``cell_retention_hours`` are pruned on
write, which bounds the size of ``aggregates.json`` (rewritten whole on every batch).

State rows and the trail (both created on first use) are few and small next to the
calls. :meth:`kv_put` is a compare-and-set under the exclusive lock that rewrites
``state.json`` whole (temp file, fsync, rename); reads need no file lock and parse the file
only when its ``(st_mtime_ns, st_size, st_ino)`` changed. :meth:`trail_append` appends one
line under the exclusive lock, then moves the ``("trail", "head")`` row in
``state.json`` before releasing it. Rotation, compaction and retention never touch either
file.

Named stores: ``JsonlStore(dir, name="traces.jsonl")`` keeps its active file under that
name and its sidecars beside it as ``<name>.aggregates.json``, ``<name>.state.json``,
``<name>.trail.jsonl`` and ``<name>.lock`` (the seed's lock file), with archives named
``<stem>-<UTC time>[-N]<suffix>.gz``, so that two stores share a folder without sharing a
file. ``dialect="seed"`` writes every record as a line of the seed's trace format (see
:mod:`sil_core.store._jsonl_format`); every store reads seed lines in either dialect.

Limits: raw reads (:meth:`read_calls`, :meth:`get_call`, :meth:`count_calls`) and
feedback look at the active file only (feedback on an archived call waits in
``pending.json`` until it expires). Duplicate
call ids are dropped within a batch and against the ids this process has cached, not
against the whole file. POSIX only (``fcntl``).
"""

from __future__ import annotations

import errno
import gzip
import logging
import math
import os
import random
import threading
import time
import weakref
from collections import OrderedDict
from copy import deepcopy
from dataclasses import replace
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

from ..aggregates import ALL_TIME, BUCKET_S, Cell, CellKey, cells_for, feedback_delta
from ..errors import ConfigError, StoreError
from ..records import CallRecord, Feedback
from ._jsonl_format import (
    O_CLOEXEC,
    archive_file,
    archive_re,
    compress_archives,
    datasync,
    decode_aggregates,
    decode_pending,
    decode_state,
    encode_aggregates,
    encode_event,
    encode_feedback,
    encode_pending,
    encode_record,
    encode_seed_record,
    encode_state,
    fold,
    fold_tail,
    fsync_dir,
    iter_lines,
    last_event,
    list_archives,
    lookup,
    parse_event,
    parse_line,
    pread_all,
    read_events,
    recover,
    replace_file,
    write_all,
)
from ._table import CellTable
from ._paths import prepare_folder
from ._common import (
    Judged,
    Pending,
    apply_feedback,
    fold_pending,
    matches,
    merge_cells,
    merge_pending,
    pending_bounds,
    prune_order,
    retained,
)
from .base import PENDING_MAX, PENDING_MAX_AGE_S, Store

__all__ = ("JsonlStore",)

ACTIVE = "calls.jsonl"
AGGREGATES = "aggregates.json"
LOCK = ".lock"
STATE = "state.json"
TRAIL = "trail.jsonl"
PENDING = "pending.json"
#: how each dialect writes a record line
ENCODERS: dict[str, Callable[[CallRecord], bytes]] = {"sil": encode_record, "seed": encode_seed_record}
#: how many call states a process keeps for feedback look-ups
CACHE_MAX = 10_000
#: above this many bytes appended by others, drop the cache instead of scanning them
TAIL_MAX = 8 << 20

_MISSING = ("missing",)
_log = logging.getLogger(__name__)


class JsonlStore(Store):
    """Call records in ``<directory>/calls.jsonl``, aggregates in ``aggregates.json``,
    state rows in ``state.json``, the trail in ``trail.jsonl``.

    Args:
        directory: the store's directory (created if missing, in a folder that exists).
        max_bytes: rotate ``calls.jsonl`` before a batch would take it past this size;
            ``None`` never rotates by size.
        archive_dir: where rotated files go (default ``<directory>/archives``).
        max_archives: how many gzip archives to keep (newest first).
        fsync: ``fdatasync``/``fsync`` every batch and replaced file (off: faster, and a
            power loss may lose the last batches).
        cell_retention_hours: hourly cells older than this (by the wall clock) are pruned
            on write, bounding ``aggregates.json`` and so the cost of every batch; all-time
            cells are kept forever. 8 days is safe for the guard's windowed questions (at
            most 72 h back by default); ``None`` keeps every hourly cell.
        name: the active file's name; any other than ``calls.jsonl`` names the sidecars
            after it (``<name>.state.json``, ...), so stores of different names share a folder.
        dialect: ``"sil"`` writes :meth:`CallRecord.to_dict` lines; ``"seed"`` writes the
            seed's trace lines (``agent_id``, ``task``, ``success``, ...), for files that
            the seed's own tools still read. Both read either kind of line.
        lock_timeout_s: how long an operation waits for the file lock another process
            holds before it raises :class:`StoreError` (10 s).
        pending_max_age_s, pending_max: bound the feedback kept for calls not written yet
            (24 h since received; 10,000 calls).

    Raises:
        ConfigError: ``max_bytes <= 0``, ``max_archives < 1``, ``cell_retention_hours``
            not a positive finite number or ``None``, a ``name`` that is not a plain file
            name, an unknown ``dialect``, or no ``fcntl``.
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
        cell_retention_hours: float | None = 24 * 8,
        name: str = ACTIVE,
        dialect: str = "sil",
        lock_timeout_s: float = 10.0,
        pending_max_age_s: float = PENDING_MAX_AGE_S,
        pending_max: int = PENDING_MAX,
    ) -> None:
        if fcntl is None:  # pragma: no cover - Windows
            raise ConfigError("jsonl:// needs POSIX file locks (fcntl); use sqlite:// on this platform")
        if max_bytes is not None and (isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes <= 0):
            raise ConfigError(f"max_bytes must be a positive int or None, not {max_bytes!r}")
        if isinstance(max_archives, bool) or not isinstance(max_archives, int) or max_archives < 1:
            raise ConfigError(f"max_archives must be an int >= 1, not {max_archives!r}")
        hours = cell_retention_hours
        if hours is not None and (isinstance(hours, bool) or not isinstance(hours, (int, float))
                                  or not math.isfinite(hours) or hours <= 0):
            raise ConfigError(f"cell_retention_hours must be a positive number or None, not {cell_retention_hours!r}")
        if (not isinstance(name, str) or name in ("", ".", "..") or "/" in name or os.sep in name
                or "\0" in name or name.endswith(".gz")):
            raise ConfigError(f"name must be a plain file name (not a path, not .gz), not {name!r}")
        if dialect not in ENCODERS:
            raise ConfigError(f"dialect must be one of {sorted(ENCODERS)}, not {dialect!r}")
        if (isinstance(lock_timeout_s, bool) or not isinstance(lock_timeout_s, (int, float))
                or not math.isfinite(lock_timeout_s) or lock_timeout_s <= 0):
            raise ConfigError(f"lock_timeout_s must be a positive number, not {lock_timeout_s!r}")
        self.lock_timeout_s = float(lock_timeout_s)
        self.pending_max_age_s, self.pending_max = pending_bounds(pending_max_age_s, pending_max)
        self.directory = Path(directory)
        self.name = name
        self.dialect = dialect
        self._encode = ENCODERS[dialect]
        self.url = f"jsonl:///{self.directory}" if name == ACTIVE else f"jsonl:///{self.directory}?name={name}"
        self.max_bytes = max_bytes
        self.max_archives = max_archives
        self.fsync = bool(fsync)
        self.cell_retention_hours = cell_retention_hours
        self.archive_dir = Path(archive_dir) if archive_dir is not None else self.directory / "archives"
        self.calls_path = self.directory / name
        self._archive_re = archive_re(self.calls_path.stem, self.calls_path.suffix)
        if name == ACTIVE:
            self.aggregates_path = self.directory / AGGREGATES
            self.lock_path = self.directory / LOCK
            self.state_path = self.directory / STATE
            self.trail_path = self.directory / TRAIL
            self.pending_path = self.directory / PENDING
        else:
            self.aggregates_path = self.directory / f"{name}.{AGGREGATES}"
            self.lock_path = self.directory / f"{name}.lock"
            self.state_path = self.directory / f"{name}.{STATE}"
            self.trail_path = self.directory / f"{name}.{TRAIL}"
            self.pending_path = self.directory / f"{name}.{PENDING}"
        #: corrupt lines seen by the last full read (read_calls, count_calls, compact, retain)
        self.corrupt_lines = 0
        self._lock_fd = -1
        with self._errors():
            if not self.directory.is_dir():
                prepare_folder(self.directory.parent, self.url)  # a typo must not create a tree
                self.directory.mkdir(exist_ok=True)
            self._lock_fd = self._open_lock()
        self._mutex = threading.Lock()
        self._pid = os.getpid()
        self._table = CellTable()
        self._epoch = 0
        self._covered: tuple | None = None  # (st_ino, size) of calls.jsonl the cells include
        self._agg_key: tuple = ()
        # (_agg_key, cutoff hour) after a write that left no hourly cell before the cutoff
        self._pruned: tuple | None = None
        # id -> current state of calls in the active file; exact for bytes [0, _idx_off)
        # of the file identified by _idx = (st_dev, st_ino, epoch)
        self._cache: OrderedDict[str, CallRecord] = OrderedDict()
        self._idx: tuple | None = None
        self._idx_off = 0
        # the parsed state.json, valid while its (st_mtime_ns, st_size, st_ino) is _state_key
        self._state: dict[str, dict[str, dict]] = {}
        self._state_key: tuple = ()
        # the parsed pending.json, valid while its (st_mtime_ns, st_size, st_ino) is _pending_key
        self._pending: dict[str, Pending] = {}
        self._pending_key: tuple = ()
        _STORES.add(self)
        with self._writing():
            try:
                self._repair_locked()
            except _CorruptAggregates:
                pass  # reads say so; rebuild_aggregates() repairs it

    # -- locking -------------------------------------------------------------------------
    def _open_lock(self) -> int:
        return os.open(self.lock_path, os.O_RDWR | os.O_CREAT | O_CLOEXEC, 0o644)

    @contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except OSError as exc:
            raise StoreError(f"{self.url}: {exc}") from exc

    @contextmanager
    def _writing(self) -> Iterator[None]:
        """The exclusive lock, for a change to the files; on failure the cached table is
        dropped, as it may hold changes that did not reach the disk."""
        with self._errors(), self._locked(exclusive=True):
            try:
                yield
            except BaseException:
                self._agg_key = ()
                raise

    @contextmanager
    def _locked(self, exclusive: bool) -> Iterator[None]:
        """This process's threads, then other processes (flock on ``.lock``), each wait
        bounded by ``lock_timeout_s``."""
        deadline = time.monotonic() + self.lock_timeout_s
        if not self._mutex.acquire(timeout=self.lock_timeout_s):
            raise StoreError(f"{self.url}: another thread held the store for more than "
                             f"{self.lock_timeout_s:g} s") from TimeoutError()
        try:
            if self._lock_fd < 0:
                raise StoreError(f"{self.url}: the store is closed")
            if self._pid != os.getpid():
                # a forked child shares the parent's open file description, and with it
                # the flock: take a lock file description of our own
                old, self._lock_fd = self._lock_fd, -1
                os.close(old)
                self._lock_fd = self._open_lock()
                self._pid = os.getpid()
            fd = self._lock_fd
            self._flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH, deadline)
            try:
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            self._mutex.release()

    def _flock(self, fd: int, mode: int, deadline: float) -> None:
        """``flock`` polled without blocking (short, jittered sleeps) until ``deadline``."""
        delay = 0.0005
        while True:
            try:
                fcntl.flock(fd, mode | fcntl.LOCK_NB)
                return
            except OSError as exc:
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise
            left = deadline - time.monotonic()
            if left <= 0:
                raise StoreError(f"{self.url}: {self.lock_path} was held by another process for more than "
                                 f"{self.lock_timeout_s:g} s") from TimeoutError()
            time.sleep(min(left, delay * (0.5 + random.random())))
            delay = min(delay * 2, 0.01)

    def close(self) -> None:
        with self._mutex:  # waits for an operation under way, itself bounded by lock_timeout_s
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
            if (st.st_mtime_ns, st.st_size, st.st_ino) == self._agg_key:
                return self._table
            with open(self.aggregates_path, "rb") as f:
                st = os.fstat(f.fileno())
                data = f.read()
        except FileNotFoundError:  # never written, or deleted by hand
            if self._agg_key != _MISSING:
                self._table, self._epoch, self._covered, self._agg_key = CellTable(), 0, None, _MISSING
            return self._table
        try:
            table, epoch, covered = decode_aggregates(data)
        except (ValueError, KeyError, TypeError, AttributeError, IndexError) as exc:
            raise _CorruptAggregates(
                f"{self.url}: {self.aggregates_path} is corrupt ({exc}); JsonlStore.rebuild_aggregates() "
                "recomputes it from calls.jsonl and the archives"
            ) from exc
        self._table, self._epoch, self._covered = table, epoch, covered
        self._agg_key = (st.st_mtime_ns, st.st_size, st.st_ino)
        return table

    def _save_table(self, table: CellTable, epoch: int, covered: tuple[int, int] | None) -> None:
        """Replace aggregates.json atomically (under :meth:`_writing`).

        ``covered`` is the ``(st_ino, size)`` of calls.jsonl whose every line the cells
        include: lines past it were appended by a writer that died before this step, and
        :meth:`_repair_locked` adds them.
        """
        # a strictly larger mtime than the file it replaces: the cache key never repeats
        prev = self._agg_key[0] if len(self._agg_key) == 3 else 0
        st = replace_file(self.aggregates_path, encode_aggregates(table, epoch, covered),
                          fsync=self.fsync, mtime_ns=max(time.time_ns(), prev + 1))
        self._table, self._epoch, self._covered = table, epoch, covered
        self._agg_key = (st.st_mtime_ns, st.st_size, st.st_ino)

    def _repair_locked(self) -> None:
        """Add the lines of a writer that died between its append and its aggregates
        update (exclusive lock held; run on open)."""
        table = self._current_table()
        try:
            fd = os.open(self.calls_path, os.O_RDONLY | O_CLOEXEC)
        except FileNotFoundError:
            return
        try:
            st = os.fstat(fd)
            if recover(fd, st, self._covered, table):
                self._save_table(table, self._epoch, (st.st_ino, st.st_size))
        finally:
            os.close(fd)

    def cells(self, target: str, *, version: str | None = None, since_hour: int | None = None,
              hist: bool = True) -> dict[tuple[str, str], Cell]:
        # aggregates.json is only ever replaced whole, so reading it needs no file lock
        with self._mutex, self._errors():
            return self._current_table().read(target, version, since_hour)

    def targets(self) -> list[str]:
        with self._mutex, self._errors():
            return self._current_table().targets()

    # -- writes ----------------------------------------------------------------------------
    def write(self, calls: Sequence[CallRecord], feedback: Sequence[Feedback] = ()) -> list[CallRecord]:
        if not calls and not feedback:
            return []
        judged = Judged()
        with self._writing():
            pending = self._write_locked(calls, feedback, judged)
        if pending is not None:
            try:
                self._finish_rotation(pending)
            except (OSError, StoreError) as exc:  # the batch is stored; a later rotation retries
                _log.warning("%s: compressing archive %s failed: %s", self.url, pending, exc)
        return judged.changed()

    def _write_locked(self, calls: Sequence[CallRecord], feedback: Sequence[Feedback], judged: Judged) -> Path | None:
        now = time.time()
        cutoff = now - self.pending_max_age_s
        waiting = self._current_pending()
        kept = dict(waiting)  # pending.json after this batch
        table = self._current_table()
        epoch = self._epoch
        cutoff_hour = self._cutoff_hour()
        # a table this process pruned and saved, with the same cutoff, has no stale hourly
        # cell: only the batch's own deltas need a look, not the whole table
        pruned = cutoff_hour is not None and self._pruned == (self._agg_key, cutoff_hour)
        batch = {r.id: r for r in calls}
        pending = None
        fd = os.open(self.calls_path, os.O_RDWR | os.O_APPEND | os.O_CREAT | O_CLOEXEC, 0o644)
        try:
            st = os.fstat(fd)
            size = st.st_size
            torn = size > 0 and os.pread(fd, 1, size - 1) != b"\n"
            self._sync_index(fd, (st.st_dev, st.st_ino, epoch), size)
            repaired = recover(fd, st, self._covered, table)
            pruned = pruned and not repaired
            for cid in [cid for cid in batch if cid in self._cache]:
                del batch[cid]  # already stored: a retried batch must not count twice
            for cid, record in batch.items():
                judged.known(record)
                entry = kept.pop(cid, None)  # feedback that came first: folded in, dropped
                if entry is not None and entry.received >= cutoff:
                    batch[cid] = fold_pending(record, entry)
                    judged.now(batch[cid])
            wanted = {fb.call_id for fb in feedback if fb.call_id not in batch and fb.call_id not in self._cache}
            states = lookup(pread_all(fd, size), wanted) if wanted else {}
            deltas: dict[CellKey, Cell] = {}
            fb_lines = []
            for fb in feedback:
                cid = fb.call_id
                if cid in batch:
                    after = apply_feedback(batch[cid], fb, now)
                    if after is not batch[cid]:
                        batch[cid] = after
                        judged.now(after)
                    continue
                before = states.get(cid)
                if before is None:
                    before = self._cache.get(cid)
                if before is None:  # not written yet (or archived): it waits in pending.json
                    entry = kept.get(cid)
                    kept[cid] = merge_pending(entry if entry is not None and entry.received >= cutoff else None, fb, now)
                    continue
                judged.known(before)
                after = apply_feedback(before, fb, now)
                if after is not before:
                    states[cid] = after
                    judged.now(after)
                    merge_cells(deltas, feedback_delta(before, after))
                    fb_lines.append(encode_feedback(fb if fb.ts is not None else replace(fb, ts=now)))
            body = b"".join([*map(self._encode, batch.values()), *fb_lines])
            if not body:
                if repaired:
                    if cutoff_hour is not None:
                        table.prune_hours(cutoff_hour)
                    self._save_table(table, epoch, (st.st_ino, size))
                    self._pruned = (self._agg_key, cutoff_hour)
                if kept != waiting:
                    self._save_pending(kept, cutoff)
                return None
            merge_cells(deltas, cells_for(batch.values()))
            if self.max_bytes is not None and size > 0 and size + torn + len(body) > self.max_bytes:
                os.close(fd)
                fd = -1
                pending = self._rotate_locked(table)
                epoch = self._epoch
                fd = os.open(self.calls_path, os.O_RDWR | os.O_APPEND | os.O_CREAT | O_CLOEXEC, 0o644)
                st = os.fstat(fd)
                size, torn, states = 0, False, {}
                self._sync_index(fd, (st.st_dev, st.st_ino, epoch), 0)
            data = b"\n" + body if torn else body
            write_all(fd, data)
            if self.fsync:
                datasync(fd)
            self._idx_off = size + len(data)
            self._remember([*batch.values(), *states.values()])
        finally:
            if fd >= 0:
                os.close(fd)
        if cutoff_hour is not None:
            # the batch's stale hours never enter the table; older ones are scanned for
            # only when it may hold some (first write, a table another process saved, a
            # new hour, or a dead writer's lines recovered)
            deltas = {k: c for k, c in deltas.items() if k[3] == ALL_TIME or k[3] >= cutoff_hour}
            if not pruned:
                table.prune_hours(cutoff_hour)
        table.apply(deltas)
        self._save_table(table, epoch, (st.st_ino, self._idx_off))
        self._pruned = (self._agg_key, cutoff_hour)
        if kept != waiting:  # after the lines: a crash in between leaves an entry, never loses one
            self._save_pending(kept, cutoff)
        return pending

    def _current_pending(self) -> dict[str, Pending]:
        """The entries of ``pending.json``, parsed only when its stat key changed (lock
        held). Never mutate the result: it is the cache."""
        try:
            st = os.stat(self.pending_path)
            if (st.st_mtime_ns, st.st_size, st.st_ino) == self._pending_key:
                return self._pending
            with open(self.pending_path, "rb") as f:
                st = os.fstat(f.fileno())
                data = f.read()
        except FileNotFoundError:
            self._pending, self._pending_key = {}, _MISSING
            return self._pending
        try:
            pending = decode_pending(data)
        except (ValueError, RecursionError) as exc:  # only feedback that waits: start afresh, and say so
            _log.warning("%s: %s is corrupt (%s); the feedback it kept is dropped", self.url, self.pending_path, exc)
            pending = {}
        self._pending, self._pending_key = pending, (st.st_mtime_ns, st.st_size, st.st_ino)
        return pending

    def _save_pending(self, pending: dict[str, Pending], cutoff: float) -> None:
        """Replace ``pending.json`` with ``pending`` pruned (received before ``cutoff``, and
        the oldest beyond ``pending_max``); removed when nothing is left."""
        kept, _ = prune_order(pending.values(), cutoff, self.pending_max)
        entries = {p.call_id: p for p in kept}
        if not entries:
            try:
                os.unlink(self.pending_path)
            except FileNotFoundError:
                pass
            self._pending, self._pending_key = {}, _MISSING
            return
        prev = self._pending_key[0] if len(self._pending_key) == 3 else 0
        st = replace_file(self.pending_path, encode_pending(entries), fsync=self.fsync,
                          mtime_ns=max(time.time_ns(), prev + 1))
        if self.fsync:
            fsync_dir(self.directory)
        self._pending, self._pending_key = entries, (st.st_mtime_ns, st.st_size, st.st_ino)

    def _cutoff_hour(self) -> int | None:
        """Hourly cells before this hour are past ``cell_retention_hours``."""
        if self.cell_retention_hours is None:
            return None
        return int((time.time() - self.cell_retention_hours * 3600) // BUCKET_S)

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
            fold_tail(pread_all(fd, size - self._idx_off, self._idx_off), self._cache)
        self._idx_off = size

    def _remember(self, records: list[CallRecord]) -> None:
        cache = self._cache
        for r in records:
            cache[r.id] = r
            cache.move_to_end(r.id)
        while len(cache) > CACHE_MAX:
            cache.popitem(last=False)

    # -- state rows: state.json ---------------------------------------------------------
    def _current_state(self) -> dict[str, dict[str, dict]]:
        """The state rows on disk, parsed only when the file's stat key changed (mutex
        held). ``state.json`` is only ever replaced whole, so this needs no file lock.
        Never mutate the result: it is the cache."""
        try:
            st = os.stat(self.state_path)
            if (st.st_mtime_ns, st.st_size, st.st_ino) == self._state_key:
                return self._state
            with open(self.state_path, "rb") as f:
                st = os.fstat(f.fileno())
                data = f.read()
        except FileNotFoundError:  # no state row written yet
            self._state, self._state_key = {}, _MISSING
            return self._state
        try:
            state = decode_state(data)
        except (ValueError, RecursionError) as exc:
            raise StoreError(
                f"{self.url}: {self.state_path} is corrupt ({exc}); it is left as it is for "
                "repair by hand (nothing is written over it)"
            ) from exc
        self._state, self._state_key = state, (st.st_mtime_ns, st.st_size, st.st_ino)
        return state

    def _put_row_locked(self, state: dict[str, dict[str, dict]], kind: str, key: str, value: dict, rev: int) -> None:
        """Replace ``state.json`` with ``state`` plus one row (exclusive lock held)."""
        new = dict(state)
        rows = dict(new.get(kind, {}))
        rows[key] = {"value": value, "rev": rev}
        new[kind] = rows
        # raises before anything is written on a value JSON cannot hold or a non-dict value
        data = encode_state(new)
        parsed = decode_state(data)
        # a strictly larger mtime than the file it replaces: the cache key never repeats
        prev = self._state_key[0] if len(self._state_key) == 3 else 0
        st = replace_file(self.state_path, data, fsync=self.fsync, mtime_ns=max(time.time_ns(), prev + 1))
        if self.fsync:
            fsync_dir(self.directory)
        self._state, self._state_key = parsed, (st.st_mtime_ns, st.st_size, st.st_ino)

    def kv_get(self, kind: str, key: str) -> tuple[dict[str, Any], int] | None:
        with self._mutex, self._errors():
            row = self._current_state().get(kind, {}).get(key)
            return None if row is None else (deepcopy(row["value"]), row["rev"])

    def kv_put(self, kind: str, key: str, value: dict[str, Any], *, expect_rev: int | None) -> int | None:
        """Compare-and-set under the exclusive lock: ``state.json`` is read afresh and
        replaced atomically, so one writer of any process wins."""
        with self._writing():
            state = self._current_state()
            row = state.get(kind, {}).get(key)
            rev = 0 if row is None else row["rev"]
            if expect_rev is not None and rev != expect_rev:
                return None
            self._put_row_locked(state, kind, key, value, rev + 1)
            return rev + 1

    def kv_list(self, kind: str) -> list[tuple[str, dict[str, Any], int]]:
        with self._mutex, self._errors():
            rows = self._current_state().get(kind, {})
            return [(k, deepcopy(rows[k]["value"]), rows[k]["rev"]) for k in sorted(rows)]

    # -- the trail: trail.jsonl ------------------------------------------------------------
    def trail_append(self, build: Callable[[dict[str, Any] | None], dict[str, Any]]) -> dict[str, Any]:
        """Append one event under the exclusive lock, then move the head row.

        ``build`` gets the last event of ``trail.jsonl`` (found by reading backwards from
        the end, past a torn last line and corrupt lines), the new line goes out in one
        ``write`` and ``fdatasync`` (a torn last line is terminated first, so it is never
        glued to the new event), and ``("trail", "head")`` in ``state.json`` becomes the
        new event's ``{"seq", "hash"}`` with rev = seq, all before the lock is released.

        The two files are not one transaction: a crash between the append and the head
        update leaves a trail one event past its head, which :func:`~sil_core.trail.verify_trail`
        reports as a head mismatch (the honest outcome: nothing is rewritten to hide it).
        Returns the event as stored.
        """
        with self._writing():
            state = self._current_state()  # a corrupt state.json raises before the append
            fd = os.open(self.trail_path, os.O_RDWR | os.O_APPEND | os.O_CREAT | O_CLOEXEC, 0o644)
            try:
                size = os.fstat(fd).st_size
                torn = size > 0 and os.pread(fd, 1, size - 1) != b"\n"
                event = build(last_event(fd, size))
                seq, digest = event["seq"], event["hash"]
                line = encode_event(event)
                stored = parse_event(line)
                if stored is None:
                    raise StoreError(f"{self.url}: a trail event needs an integer seq, not {seq!r}")
                write_all(fd, b"\n" + line if torn else line)
                if self.fsync:
                    datasync(fd)
                    if size == 0:
                        fsync_dir(self.directory)  # the file may be new
            finally:
                os.close(fd)
            self._put_row_locked(state, "trail", "head", {"seq": seq, "hash": digest}, seq)
            return stored

    def trail_read(self, *, target: str | None = None, after_seq: int = 0, limit: int | None = None) -> list[dict[str, Any]]:
        """Events in file order, which is ``seq`` order (optionally one target's, after a
        sequence number). A line that is not an event reads as ``{"seq": None, "corrupt":
        "<the line>"}`` (when no ``target`` is asked for), so that verification reports it."""
        return read_events(self._snapshot(self.trail_path), target, after_seq, limit)

    # -- rotation --------------------------------------------------------------------------
    def rotate(self, force: bool = False) -> Path | None:
        """Archive the active file if it is past ``max_bytes`` (or non-empty, with ``force``).

        Returns the new ``.jsonl.gz`` archive, or ``None`` when nothing was rotated.
        Aggregates are untouched.
        """
        with self._writing():
            try:
                size = os.stat(self.calls_path).st_size
            except FileNotFoundError:
                return None
            if size == 0 or not (force or (self.max_bytes is not None and size > self.max_bytes)):
                return None
            self._repair_locked()  # count a dead writer's lines before archiving them
            pending = self._rotate_locked(self._current_table())
        with self._errors():
            return self._finish_rotation(pending)

    def _rotate_locked(self, table: CellTable) -> Path:
        """Archive the active file and start an empty one, which ``table`` covers before
        anything is appended to it (exclusive lock held). Returns what
        :meth:`_finish_rotation` compresses after the lock is released."""
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
        pending, ino = archive_file(self.calls_path, self.archive_dir, stamp, fsync=self.fsync)
        self._save_table(table, self._epoch + 1, (ino, 0))
        self._idx = None
        return pending

    def _finish_rotation(self, path: Path) -> Path:
        """Gzip a renamed active file (and any left by a crash), then prune archives."""
        if path.name.endswith(".gz"):  # compressed already (the archive folder is on another file system)
            final = path
        else:
            final = compress_archives(path, fsync=self.fsync, pattern=self._archive_re)
        with self._locked(exclusive=True):
            self._prune_locked()
        return final

    def _prune_locked(self) -> None:
        for path in self.archives()[: -self.max_archives]:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass

    def archives(self, *, pending: bool = False) -> list[Path]:
        """The gzip archives, oldest first (with ``pending``, also rotated files not
        compressed yet, where no ``.gz`` of the same name exists)."""
        return list_archives(self.archive_dir, pending, self._archive_re)

    # -- rewrites: compaction and retention -------------------------------------------------
    def compact(self, max_entries: int, *, per_target: bool = True) -> int:
        """Keep the newest ``max_entries`` records per target in the active file (with
        ``per_target=False``: the last ``max_entries`` records of the file, whatever their
        target, in file order, as the seed's ``JsonlTraceStore.compact`` did).

        Corrupt lines are dropped and feedback lines folded into their records. Returns
        how many valid records were removed. Aggregates are untouched.
        """
        if isinstance(max_entries, bool) or not isinstance(max_entries, int) or max_entries < 0:
            raise ConfigError(f"max_entries must be an int >= 0, not {max_entries!r}")

        def choose(rows: list[CallRecord]) -> list[CallRecord]:
            if per_target:
                return retained(rows, None, max_entries, 0.0)
            return rows[max(0, len(rows) - max_entries):] if max_entries else []

        with self._writing():
            return self._rewrite_locked(choose, None)

    def retain(self, *, max_age_s: float | None = None, max_calls: int | None = None, now: float | None = None) -> int:
        """Drop records older than ``max_age_s`` and beyond the newest ``max_calls`` per
        target from the active file, and hourly cells older than the age cutoff.

        All-time cells stay, so whole-history statistics are unchanged. Returns how many
        records were removed.
        """
        now = time.time() if now is None else now
        prune_before = None if max_age_s is None else int((now - max_age_s) // BUCKET_S)
        with self._writing():
            return self._rewrite_locked(lambda rows: retained(rows, max_age_s, max_calls, now), prune_before)

    def _rewrite_locked(self, choose: Callable[[list[CallRecord]], list[CallRecord]], prune_before: int | None) -> int:
        try:
            with open(self.calls_path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            data = b""
        records, self.corrupt_lines = fold(data)
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
            body = b"".join(self._encode(r) for r in records.values() if r.id in keep)
            st = replace_file(self.calls_path, body, fsync=self.fsync)
            if self.fsync:
                fsync_dir(self.directory)
            epoch += 1
            self._idx = None
            covered = (st.st_ino, len(body))
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
        with self._writing():
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
                fold(data, records)
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
    def _snapshot(self, path: Path | None = None) -> bytes:
        """The bytes of the active file (or ``path``) as of a moment when no write was
        under way.

        The shared lock is held only to open the file and take its size: the file is only
        ever appended to or replaced, so those bytes cannot change afterwards.
        """
        with self._errors():
            with self._locked(exclusive=False):
                try:
                    f = open(self.calls_path if path is None else path, "rb")
                except FileNotFoundError:
                    return b""
                size = os.fstat(f.fileno()).st_size
            with f:
                return f.read(size)

    def read_calls(self, target=None, *, since=None, until=None, version=None, limit=1000) -> list[CallRecord]:
        """The newest ``limit`` matching records of the **active file**, oldest first.

        Archived (rotated) records are not read; their evidence stays in the aggregates.
        """
        records, self.corrupt_lines = fold(self._snapshot())
        rows = [r for r in records.values() if matches(r, target, since, until, version)]
        rows.sort(key=lambda r: (r.ts, r.id))
        return rows[-limit:] if limit else []

    def get_call(self, call_id: str) -> CallRecord | None:
        """One record of the active file by id (with its feedback), or ``None``."""
        return lookup(self._snapshot(), {call_id}).get(call_id)

    def iter_records(self, *, reverse: bool = False) -> Iterator[CallRecord]:
        """Every record line of the **active file** as written, first to last (or last to
        first with ``reverse``, read backwards in chunks, so a consumer that stops early
        reads only the file's tail).

        For tools that need file order or a bounded tail: feedback lines are not folded in
        (use :meth:`read_calls` for current states), corrupt lines and a torn last line are
        skipped. The file is the one of the moment of the first ``next()``: a rotation or
        compaction after that does not change what the iterator yields.
        """
        with self._errors():
            with self._locked(exclusive=False):
                try:
                    fd = os.open(self.calls_path, os.O_RDONLY | O_CLOEXEC)
                except FileNotFoundError:
                    return
                try:
                    size = os.fstat(fd).st_size
                except BaseException:
                    os.close(fd)
                    raise
        try:
            for line in iter_lines(fd, size, reverse=reverse):
                item = parse_line(line) if line.strip() else None
                if isinstance(item, CallRecord):
                    yield item
        finally:
            os.close(fd)

    def count_calls(self, target: str | None = None) -> int:
        """How many records the active file holds, for one or all targets."""
        records, self.corrupt_lines = fold(self._snapshot())
        if target is None:
            return len(records)
        return sum(1 for r in records.values() if r.target == target)


class _CorruptAggregates(StoreError):
    pass


_STORES: "weakref.WeakSet[JsonlStore]" = weakref.WeakSet()


def _reinit_after_fork() -> None:
    # another thread may have held a store's mutex at the fork: the child needs new ones
    # (the lock file is reopened on first use, see JsonlStore._locked)
    for store in list(_STORES):
        store._mutex = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reinit_after_fork)
