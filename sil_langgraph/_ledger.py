"""Which call a GuardNode's verdict belongs to.

A guarded node whose target a :class:`~sil_langgraph.GuardNode` watches notes each
successful execution's call id under the **graph run** that made it (one invocation of the
compiled graph: ``invoke``, ``ainvoke``, a stream), so the GuardNode of the same run judges
exactly those calls, whatever the concurrency and with or without a thread id. The run is
the invocation's stream writer (``Runtime.stream_writer``, one object per invocation, shared
by its nodes), held weakly: an entry goes away with its run.

With a thread id the note is also written to the guard's store (kind ``"lg_judge"``, key
``"<target>|<thread id>"``), off the caller's thread, so a GuardNode that runs in another
run (after an ``interrupt()`` and a resume, possibly in another worker) finds the call and
sends its verdict as feedback: one execution, one record, wherever the check runs.
"""

import atexit
import threading
import weakref
from collections import OrderedDict
from typing import Any, Dict, List, Optional

from sil_core.integration import BackgroundWorker, fail_open

from ._compat import RUNTIME_KEY

__all__ = ("JUDGE_KIND", "Ledger", "ledger", "run_of")

JUDGE_KIND = "lg_judge"
_SERVED_MAX = 10_000


def run_of(configurable: Any) -> Any:
    """The graph run an execution belongs to (``None`` when LangGraph does not say)."""
    try:
        return configurable[RUNTIME_KEY].stream_writer
    except (KeyError, AttributeError, TypeError):
        return None


class Ledger:
    """Per guard, in this process: the calls of judged targets waiting for a GuardNode's
    verdict, per run, and the version each (target, thread) was last served."""

    def __init__(self, guard: Any) -> None:
        self.guard = guard
        self.lock = threading.Lock()
        self.judged: set = set()
        self._runs: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # run -> {target: [calls]}
        self._by_id: "OrderedDict[int, Dict[str, list]]" = OrderedDict()  # runs that cannot be weakly held
        self.served: "OrderedDict[tuple, tuple]" = OrderedDict()  # (target, run or thread) -> (version, arm)
        self._writes = BackgroundWorker("sil-lg-judge", self._write)

    def _pending(self, run: Any, create: bool) -> Optional[Dict[str, list]]:
        try:
            found = self._runs.get(run)
            if found is None and create:
                found = self._runs[run] = {}
            return found
        except TypeError:  # not weakly referenceable: by id, bounded
            found = self._by_id.get(id(run))
            if found is None and create:
                found = self._by_id[id(run)] = {}
                while len(self._by_id) > _SERVED_MAX:
                    self._by_id.popitem(last=False)
            return found

    def note(self, target: str, run: Any, thread: Any, version: Any, arm: Any, call_id: str) -> None:
        """A successful execution of ``target`` waits for a GuardNode's verdict."""
        with self.lock:
            if run is not None:
                self._pending(run, True).setdefault(target, []).append(call_id)
            key = (target, run if run is not None else thread)
            self.served.pop(key, None)
            self.served[key] = (version, arm)
            if thread is not None:
                self.served.pop((target, thread), None)
                self.served[(target, thread)] = (version, arm)
            while len(self.served) > _SERVED_MAX:
                self.served.popitem(last=False)
        if thread is not None:
            self._writes.submit(("note", target, thread, call_id, version, arm))

    def take(self, target: str, run: Any, thread: Any) -> Optional[List[str]]:
        """The calls of ``target`` in this run waiting for a verdict (``None``: none here)."""
        with self.lock:
            pending = self._pending(run, False) if run is not None else None
            calls = pending.pop(target, None) if pending else None
        if calls and thread is not None:
            self._writes.submit(("clear", target, thread, calls))
        return calls

    def take_stored(self, target: str, thread: Any) -> Optional[List[str]]:
        """The calls noted in the store for ``(target, thread)`` by any worker (a GuardNode
        that runs after a resume); cleared by compare-and-set so one verdict judges them."""
        self._writes.drain(5.0)  # this worker's own notes first
        store = self.guard.store
        for _ in range(5):
            got = store.kv_get(JUDGE_KIND, f"{target}|{thread}")
            if got is None or not got[0].get("calls"):
                return None
            value, rev = got
            if store.kv_put(JUDGE_KIND, f"{target}|{thread}", {}, expect_rev=rev) is not None:
                with self.lock:
                    self.served[(target, thread)] = (value.get("version"), value.get("arm"))
                return list(value["calls"])
        return None

    def served_version(self, target: str, run: Any, thread: Any) -> Optional[tuple]:
        with self.lock:
            return self.served.get((target, run)) or self.served.get((target, thread))

    def _write(self, job: tuple) -> None:
        store = self.guard.store
        with fail_open("langgraph.judge_note"):
            if job[0] == "note":
                _, target, thread, call_id, version, arm = job
                for _ in range(10):
                    got = store.kv_get(JUDGE_KIND, f"{target}|{thread}")
                    value, rev = got if got else ({}, 0)
                    calls = value.get("calls", []) if value.get("version") == version else []
                    new = {"calls": (calls + [call_id])[-100:], "version": version, "arm": arm}
                    if store.kv_put(JUDGE_KIND, f"{target}|{thread}", new, expect_rev=rev) is not None:
                        return
            else:
                _, target, thread, taken = job
                for _ in range(10):
                    got = store.kv_get(JUDGE_KIND, f"{target}|{thread}")
                    if got is None:
                        return
                    value, rev = got
                    left = [c for c in value.get("calls", []) if c not in taken]
                    if store.kv_put(JUDGE_KIND, f"{target}|{thread}", {**value, "calls": left},
                                    expect_rev=rev) is not None:
                        return


_ledgers: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_ledgers_lock = threading.Lock()


def ledger(guard: Any) -> Ledger:
    led = _ledgers.get(guard)
    if led is None:
        with _ledgers_lock:
            led = _ledgers.get(guard)
            if led is None:
                led = _ledgers[guard] = Ledger(guard)
    return led


@atexit.register
def _drain_all() -> None:
    """A process that ends right after an interrupt (a one-shot worker) writes its notes."""
    for led in list(_ledgers.values()):
        led._writes.drain(5.0)
