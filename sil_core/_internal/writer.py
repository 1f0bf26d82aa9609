"""Write-behind: records queue in memory and reach the store in batched transactions.

The hot path only appends to a deque (thread-safe, lock-free in CPython). One daemon
thread per writer drains it every ``interval`` seconds, or at once when a batch fills or
a caller waits: everything queued at that moment goes into one ``store.write`` (group
commit). ``durability="sync"`` callers wait for the transaction that holds their record.
The queue is bounded; a failed write is retried with backoff, and records beyond the
bound are dropped and counted, never kept without limit. A batch the store rejects is
written in halves down to single records, so that one record it refuses (while it takes
the others) is set aside, logged and counted instead of blocking every later record. A record put after ``close()``
is dropped and counted too (and said once on the ``sil_core`` logger): nothing would
ever write it.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import threading
import weakref
from concurrent.futures import Future
from typing import Any, Callable, Sequence

from ..records import CallRecord, Feedback
from .exits import own_thread
from .failopen import report
from .ids import new_id
from .jsonsafe import dumps_context
from .validate import safe_text

_writers: "weakref.WeakSet[Writer]" = weakref.WeakSet()
_log = logging.getLogger("sil_core")


class _Waiter:
    """An item a caller waits on: a record in sync mode, or a flush marker."""

    __slots__ = ("item", "future")

    def __init__(self, item: Any) -> None:
        self.item = item
        self.future: Future = Future()


class Writer:
    """The write-behind queue and flusher thread of one Guard."""

    def __init__(
        self,
        store: Any,
        *,
        interval: float = 0.2,
        batch_size: int = 1000,
        max_pending: int = 100_000,
        max_retry_delay: float = 5.0,
        on_written: Callable[[Sequence[CallRecord], Sequence[Feedback], Any], None] | None = None,
        on_tick: Callable[[], None] | None = None,
    ) -> None:
        self.store = store
        self.interval = interval
        self.batch_size = batch_size
        self.max_pending = max_pending
        self.max_retry_delay = max_retry_delay
        self.on_written = on_written
        self.on_tick = on_tick
        self.dropped = 0
        #: records put after close(): nothing will write them
        self.dropped_after_close = 0
        self.written = 0
        self.failed_writes = 0
        #: records that close() gave up on (the store did not take them in time)
        self.abandoned = 0
        #: records (or feedback) the store rejected while it took others: logged, not retried
        self.set_aside = 0
        #: the last write error (``None`` once a write succeeds again)
        self.last_error: BaseException | None = None
        self._inflight = 0  # records of the batch being written now
        self._queue: collections.deque = collections.deque()
        self._retry: list = []  # prepared records/feedback of a failed batch, written first
        self._wake = threading.Event()
        self._io = threading.Lock()  # one flush at a time (thread or inline)
        self._thread: threading.Thread | None = None
        self._closed = False
        self._delay = interval
        #: queue length at which put() takes the slow path; 0 until the flusher thread runs
        self._limit = 0
        _writers.add(self)

    # -- hot path ------------------------------------------------------------------------
    def put(self, item: CallRecord | Feedback | tuple) -> None:
        """Queue an item; returns at once. A tuple is a :class:`CallRecord`'s fields in
        order, turned into the record on the flusher thread (the cheapest thing to queue)."""
        queue = self._queue
        queue.append(item)
        if len(queue) >= self._limit:  # rare: no flusher thread yet, a full batch, a full queue
            self._full()

    def _full(self) -> None:
        if self._closed:
            self._drop_after_close()
            return
        if self._thread is None:  # first use, or a forked child (see _after_fork)
            self._start()
        queue = self._queue
        while len(queue) > self.max_pending:
            self._drop_oldest()
        if len(queue) >= self.batch_size and not self._wake.is_set():
            self._wake.set()

    def put_durable(self, item: CallRecord | Feedback, timeout: float | None = 30.0) -> bool:
        """Queue an item and wait until its batch is committed; ``False`` if it was not."""
        waiter = self._enqueue_waiter(item)
        try:
            return bool(waiter.future.result(timeout))
        except Exception:  # timeout: fail open, the caller goes on
            return False

    async def aput_durable(self, item: CallRecord | Feedback, timeout: float | None = 30.0) -> bool:
        """Async twin of :meth:`put_durable`: waits without blocking the event loop."""
        waiter = self._enqueue_waiter(item)
        try:
            return bool(await asyncio.wait_for(asyncio.wrap_future(waiter.future), timeout))
        except asyncio.TimeoutError:
            return False

    # -- control -------------------------------------------------------------------------
    def flush(self, timeout: float | None = 30.0) -> bool:
        """Write everything queued so far; ``True`` when it is all committed."""
        if threading.current_thread() is self._thread:
            return True  # called back from a batch's on_written: that batch is already committed
        if self._thread is None or self._closed:
            return self._drain()
        return self.put_durable(None, timeout)

    async def aflush(self, timeout: float | None = 30.0) -> bool:
        """Async twin of :meth:`flush`: waits without blocking the event loop."""
        if self._thread is None or self._closed:
            return await asyncio.get_running_loop().run_in_executor(None, self._drain)
        try:
            return bool(await asyncio.wait_for(asyncio.wrap_future(self._enqueue_waiter(None).future), timeout))
        except asyncio.TimeoutError:
            return False

    def hurry(self, interval: float = 0.01) -> None:
        """Write every ``interval`` seconds from now on (a graceful shutdown has begun)."""
        self.interval = self._delay = min(self.interval, interval)
        self._wake.set()

    def close(self, timeout: float | None = 30.0) -> bool:
        """Write what is queued (within ``timeout``), then stop: a later put is dropped."""
        ok = self.flush(timeout)
        self._closed = True
        self._limit = 0  # every later put takes the slow path, which drops it
        if not ok:
            retry, self._retry = self._retry, []
            self.abandoned += len(retry) + self._inflight + self._drop_queued()
        self._wake.set()
        return ok

    @property
    def pending(self) -> int:
        """Records queued or waiting for a retry (not counting a batch being written)."""
        return len(self._queue) + len(self._retry)

    # -- internals -----------------------------------------------------------------------
    def _drop_queued(self) -> int:
        dropped = 0
        while True:
            try:
                item = self._queue.pop()
            except IndexError:
                return dropped
            if isinstance(item, _Waiter):
                item.future.set_result(False)
                if item.item is None:
                    continue  # a flush marker: nothing to drop
            dropped += 1

    def _drop_after_close(self, dropped: int = 0) -> None:
        dropped += self._drop_queued()
        if dropped:
            first = self.dropped_after_close == 0
            self.dropped_after_close += dropped
            if first:
                _log.warning("sil-guard: a call was recorded after its Guard was closed; its record is dropped "
                             "(%d so far; close the Guard only when the program is done with it)", dropped)

    def _enqueue_waiter(self, item: Any) -> _Waiter:
        waiter = _Waiter(item)
        if self._closed:
            waiter.future.set_result(False)
            self._drop_after_close(item is not None)
            return waiter
        if len(self._queue) >= self.max_pending:
            self._drop_oldest()
        self._queue.append(waiter)
        if self._thread is None:
            self._start()
        self._wake.set()
        return waiter

    def _drop_oldest(self) -> None:
        try:
            old = self._queue.popleft()
        except IndexError:
            return
        self.dropped += 1
        if isinstance(old, _Waiter):
            old.future.set_result(False)

    def _start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="sil-writer", daemon=True)
        self._thread.start()
        self._limit = min(self.batch_size, self.max_pending + 1)

    def _run(self) -> None:
        own_thread()
        while not self._closed:
            self._wake.wait(self._delay)
            self._wake.clear()
            self._drain()
            if self.on_tick is not None:
                try:
                    self.on_tick()
                except Exception as exc:
                    report("on_tick", exc)
        self._drain()

    def _drain(self) -> bool:
        """Write everything queued; ``True`` if all of it is committed."""
        with self._io:
            while self._queue or self._retry:
                calls: list[CallRecord] = []
                feedback: list[Feedback] = []
                waiters: list[_Waiter] = []
                for item in self._retry:
                    (calls if isinstance(item, CallRecord) else feedback).append(item)
                self._retry = []
                queue = self._queue
                while queue and len(calls) + len(feedback) < self.batch_size:
                    item = queue.popleft()
                    if isinstance(item, _Waiter):
                        waiters.append(item)
                        item = item.item
                        if item is None:  # a flush marker
                            continue
                    if type(item) is tuple:  # a record's fields, queued by a hot path (see Writer.put)
                        item = CallRecord(*item)
                    if isinstance(item, CallRecord):
                        _prepare(item)
                        calls.append(item)
                    else:
                        feedback.append(item)
                self._inflight = len(calls) + len(feedback)
                written = self._write(calls, feedback)
                self._inflight = 0
                if not written:
                    for w in waiters:
                        w.future.set_result(False)
                    return False
                for w in waiters:
                    w.future.set_result(True)
            return True

    def _write(self, calls: list[CallRecord], feedback: list[Feedback]) -> bool:
        if not calls and not feedback:
            return True
        try:
            changed = self.store.write(calls, feedback)
        except Exception as exc:
            self.failed_writes += 1
            self.last_error = exc
            report("store.write", exc)
            if _transient(exc) or len(calls) + len(feedback) == 1 or not self._store_is_up():
                kept = [*calls, *feedback]  # the store is down, locked or slow: all of it later
            else:
                kept = self._split(list(calls), list(feedback))
            if not kept:  # every record was written, or set aside: the store is up
                return True
            room = self.max_pending - len(self._queue)
            retry = kept[: max(room, 0)]
            self.dropped += len(kept) - len(retry)
            self._retry = retry
            self._delay = min(self.max_retry_delay, max(self._delay * 2, 0.05))
            return False
        self._written(calls, feedback, changed)
        return True

    def _written(self, calls: list[CallRecord], feedback: list[Feedback], changed: Any) -> None:
        self._delay = self.interval
        self.last_error = None
        self.written += len(calls)
        if self.on_written is not None:
            try:
                self.on_written(calls, feedback, changed)
            except Exception as exc:
                report("on_written", exc)

    def _split(self, calls: list[CallRecord], feedback: list[Feedback]) -> list:
        """After a failed batch: write it in halves, down to single items, so that one
        record the store rejects (while it takes others) is set aside, logged and counted,
        and every other record is written. Returns what to retry later (everything, when
        the store itself is down)."""
        items: list = [*calls, *feedback]
        if len(items) > 1:
            half = len(items) // 2
            first = self._split_write(items[:half])
            second = self._split_write(items[half:])
            return first + second
        return self._split_write(items)

    def _split_write(self, items: list) -> list:
        calls = [i for i in items if isinstance(i, CallRecord)]
        feedback = [i for i in items if not isinstance(i, CallRecord)]
        try:
            changed = self.store.write(calls, feedback)
        except Exception as exc:
            if _transient(exc) or not self._store_is_up():
                return items  # not the record: the store is down, locked or slow
            if len(items) > 1:
                return self._split(calls, feedback)
            item = items[0]
            self.set_aside += 1
            _log.warning("sil-guard: the store rejected a record while it accepts others; set aside: %r "
                         "(%s: %s; %d set aside so far)", _describe(item), type(exc).__name__, exc, self.set_aside)
            return []
        self._written(calls, feedback, changed)
        return []

    def _store_is_up(self) -> bool:
        try:
            self.store.kv_get("sil", "probe")
            return True
        except Exception:
            return False


#: errors of a store that is down, locked or slow (retried later), not of a record
_TRANSIENT = ("OperationalError", "LockNotAvailable", "QueryCanceled", "ConnectionError", "TimeoutError",
              "OSError", "DeadlockDetected", "SerializationFailure")


def _transient(exc: BaseException | None) -> bool:
    seen = 0
    while exc is not None and seen < 5:
        if any(t.__name__ in _TRANSIENT for t in type(exc).__mro__):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


def _describe(item: Any) -> str:
    if isinstance(item, CallRecord):
        return f"call {item.id} of {item.target!r} ({item.outcome}, {item.duration_s!r} s)"
    return f"feedback on call {getattr(item, 'call_id', '?')}"


def _prepare(record: CallRecord) -> None:
    """Give the record an id if it has none and encode its context as bounded JSON (off
    the hot path; never raises)."""
    if record.id is None:
        record.id = new_id()
    elif type(record.id) is not str:  # a CallInfo: its call_id, made now unless asked for already
        record.id = record.id.call_id
    if record.context is not None:
        try:
            record.context = safe_text(dumps_context(record.context))
        except Exception as exc:
            report("context.encode", exc)
            record.context = None
    record.target, record.version, record.arm = safe_text(record.target), safe_text(record.version), \
        safe_text(record.arm)
    record.error_type, record.error_message = safe_text(record.error_type), safe_text(record.error_message)


def _after_fork() -> None:
    # a forked child has no flusher thread, and the queued records are the parent's to write
    for writer in list(_writers):
        writer._thread = None
        writer._limit = 0
        writer._queue.clear()
        writer._retry = []
        writer._io = threading.Lock()
        writer._wake = threading.Event()
        writer.dropped = writer.dropped_after_close = writer.written = writer.failed_writes = writer.abandoned = 0
        writer.set_aside = 0
        writer.last_error = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)
