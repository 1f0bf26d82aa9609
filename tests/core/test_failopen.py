"""The guard fails open: its own failures never reach the guarded call."""

from __future__ import annotations

import json
import time

import pytest

from sil_core import Guard
from sil_core.store import MemoryStore
from sil_core._internal import failopen


class BrokenStore(MemoryStore):
    def __init__(self, fail_times: int = 10**9):
        super().__init__()
        self.fail_times = fail_times
        self.attempts = 0

    def write(self, calls, feedback=()):
        self.attempts += 1
        if self.attempts <= self.fail_times:
            raise OSError("disk on fire")
        super().write(calls, feedback)


class RaisingNotifier:
    def notify(self, event):
        raise RuntimeError("notifier down")


def test_a_store_that_raises_never_reaches_the_caller():
    store = BrokenStore()
    before = failopen.error_counts["store.write"]
    g = Guard(store, flush_interval=0.01)

    @g.track("t")
    def f(x):
        return x * 2

    @g.track("t")
    def bad():
        raise KeyError("mine")

    assert f(21) == 42
    with pytest.raises(KeyError):
        bad()
    assert g.flush(timeout=2) is False  # not durable, and honest about it
    assert g.stats("t").n == 0
    assert failopen.error_counts["store.write"] > before
    g.close(timeout=1)


def test_sync_durability_with_a_broken_store_still_returns():
    g = Guard(BrokenStore(), durability="sync")

    @g.track("t")
    def f():
        return "result"

    t0 = time.perf_counter()
    assert f() == "result"
    assert time.perf_counter() - t0 < 5
    g.close(timeout=1)


def test_records_survive_a_transient_store_failure():
    store = BrokenStore(fail_times=2)
    g = Guard(store, flush_interval=0.01)
    for _ in range(5):
        g.record("t", success=True, latency_s=0.1)
    deadline = time.time() + 10
    while store.count_calls("t") < 5 and time.time() < deadline:
        time.sleep(0.05)
    assert store.count_calls("t") == 5
    g.close()


def test_a_notifier_that_raises_never_reaches_the_caller():
    before = failopen.error_counts["notifier"]
    g = Guard("memory://", notifiers=[RaisingNotifier()])
    g.thresholds.set_manual_threshold("t", failure_threshold=1, min_failure_rate=0.0)

    @g.track("t")
    def bad():
        raise ValueError("agent error")

    for _ in range(3):
        with pytest.raises(ValueError):
            bad()
    g.flush()
    g._events.drain(2)
    assert failopen.error_counts["notifier"] > before
    g.close()


def test_unserialisable_context_is_stored_as_repr():
    g = Guard("memory://")

    class Opaque:
        def __repr__(self):
            return "<Opaque thing>"

    with g.call("t", context={"obj": Opaque(), "set": {1}, 3: b"bytes"}) as call:
        pass
    g.flush()
    ctx = g.store.get_call(call.call_id).context_value()
    assert ctx["obj"] == "<Opaque thing>" and ctx["set"] == [1] and ctx["3"] == "b'bytes'"
    g.close()


def test_a_broken_repr_is_survived():
    g = Guard("memory://")

    class Nasty:
        def __repr__(self):
            raise RuntimeError("no repr for you")

    assert g.record("t", success=True, latency_s=0.1, context={"x": Nasty()})
    g.flush()
    assert "unrepresentable" in json.dumps(g.store.read_calls("t")[0].context_value())
    g.close()


def test_a_10mb_context_string_is_bounded():
    g = Guard("memory://")
    huge = "x" * (10 * 1024 * 1024)

    @g.track("t")
    def f():
        return len(huge)

    with g.call("t", context={"prompt": huge}) as call:
        pass
    assert f() == len(huge)
    g.flush()
    stored = g.store.get_call(call.call_id).context
    assert len(stored) < 20_000
    g.close()


def test_a_broken_success_predicate_is_a_failure_not_a_crash():
    g = Guard("memory://")

    @g.track("t", success=lambda r: 1 / 0)
    def f():
        return "kept"

    assert f() == "kept"
    assert g.stats("t").failures == 1
    g.close()
