"""A daemon thread with a bounded queue: notifiers and webhooks never run on the caller."""

from __future__ import annotations

import collections
import os
import threading
import weakref
from typing import Any, Callable

from .exits import own_thread
from .failopen import report

_workers: "weakref.WeakSet[BackgroundWorker]" = weakref.WeakSet()


class BackgroundWorker:
    """Runs ``handler(item)`` for each queued item on one daemon thread.

    The queue is bounded (the oldest item is dropped and counted when it is full); a
    handler error is reported and swallowed. The thread starts on first use and again
    in a forked child, which starts with an empty queue: the parent's items are the
    parent's to handle (a notifier must not fire twice).
    """

    def __init__(self, name: str, handler: Callable[[Any], None], *, max_queue: int = 1000) -> None:
        self.name = name
        self.handler = handler
        self.dropped = 0
        self._queue: collections.deque = collections.deque(maxlen=max_queue)
        self._event = threading.Event()
        self._done = threading.Condition()
        self._unfinished = 0
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()
        self._closed = False
        _workers.add(self)

    @property
    def unfinished(self) -> int:
        """Items submitted and not handled yet (the one running included)."""
        return self._unfinished

    def submit(self, item: Any) -> None:
        if self._closed:
            return
        with self._done:
            if len(self._queue) == self._queue.maxlen:
                self.dropped += 1  # the oldest item is evicted: it will never finish
            else:
                self._unfinished += 1
            self._queue.append(item)
        self._ensure_thread()
        self._event.set()

    def _ensure_thread(self) -> None:
        if self._thread is None or self._pid != os.getpid() or not self._thread.is_alive():
            self._pid = os.getpid()
            self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
            self._thread.start()

    def _run(self) -> None:
        own_thread()
        while True:
            self._event.wait()
            self._event.clear()
            while self._queue:
                try:
                    item = self._queue.popleft()
                except IndexError:
                    break
                try:
                    self.handler(item)
                except Exception as exc:  # fail open: a handler never kills the worker
                    report(self.name, exc)
                finally:
                    with self._done:
                        self._unfinished -= 1
                        if self._unfinished <= 0:
                            self._unfinished = 0
                            self._done.notify_all()
            if self._closed and not self._queue:
                return

    def drain(self, timeout: float | None = 5.0) -> bool:
        """Wait until every queued item was handled; ``False`` on timeout."""
        if threading.current_thread() is self._thread:
            return True  # called from one of our own items: waiting would deadlock
        with self._done:
            return self._done.wait_for(lambda: self._unfinished <= 0 or self._pid != os.getpid(), timeout)

    def close(self, timeout: float | None = 5.0) -> None:
        self.drain(timeout)
        self._closed = True
        self._event.set()


def _after_fork() -> None:
    for worker in list(_workers):
        worker._queue.clear()
        worker._unfinished = 0
        worker._event = threading.Event()
        worker._done = threading.Condition()
        worker._thread = None
        worker._pid = os.getpid()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)
