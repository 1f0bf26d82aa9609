"""The async control plane: every blocking Guard method has an async twin that keeps the
event loop running while the store is slow."""

from __future__ import annotations

import asyncio
import time

import pytest

from sil_core import DictConfigAdapter, Guard, RolloutPolicy, State
from sil_core.store import MemoryStore

DELAY = 0.3


class SlowStore(MemoryStore):
    """A store whose every read and write takes ``DELAY`` seconds (a database under load)."""

    def write(self, calls, feedback=()):
        time.sleep(DELAY)
        super().write(calls, feedback)

    def cells(self, *args, **kwargs):
        time.sleep(DELAY)
        return super().cells(*args, **kwargs)

    def kv_get(self, kind, key):
        time.sleep(DELAY / 10)
        return super().kv_get(kind, key)


async def _max_lag_while(coro) -> tuple[object, float]:
    """Run ``coro`` while a ticker measures how late the loop wakes it (event-loop lag)."""
    lags: list[float] = []
    stop = asyncio.Event()

    async def ticker():
        while not stop.is_set():
            t0 = time.perf_counter()
            await asyncio.sleep(0.005)
            lags.append(time.perf_counter() - t0 - 0.005)

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0.02)
    try:
        result = await coro
    finally:
        stop.set()
        await task
    return result, max(lags)


async def test_a_slow_store_does_not_stall_the_loop():
    guard = Guard(SlowStore(), adapter=DictConfigAdapter({"a": {"x": 1}}), policy=RolloutPolicy(min_calls=5))
    async with guard:
        for _ in range(20):
            async with guard.call("a"):
                pass
        ok, lag = await _max_lag_while(guard.aflush())
        assert ok and lag < 0.1, lag
        stats, lag = await _max_lag_while(guard.astats("a"))
        assert stats.n == 20 and lag < 0.1, lag
        change, lag = await _max_lag_while(guard.apropose("a", {"x": 2}))
        assert change.state in (State.CANARY, State.SWITCHED) and lag < 0.1, lag
        latest, lag = await _max_lag_while(guard.achange("a"))
        assert latest.id == change.id and lag < 0.1, lag
        rolled, lag = await _max_lag_while(guard.arollback("a"))
        assert rolled is True and lag < 0.1, lag
        drained, lag = await _max_lag_while(guard.adrain())
        assert drained and lag < 0.1, lag
        report, lag = await _max_lag_while(guard.averify_trail())
        assert report.ok and lag < 0.1, lag
        assert [v["version"] for v in await guard.aversions("a")] == [change.baseline_version, change.candidate_version]
        assert [e["type"] for e in await guard.atrail("a")][-1] == "rollback_succeeded"
    assert guard._closed  # async with closed it


async def test_the_blocking_twin_does_stall_the_loop():
    """The contrast that makes the test above meaningful: the sync call freezes the loop."""
    async with Guard(SlowStore()) as guard:
        guard.record("a", success=True, latency_s=0.1)
        guard.flush()

        async def blocking():
            return guard.stats("a")

        stats, lag = await _max_lag_while(blocking())
        assert stats.n == 1 and lag >= DELAY * 0.8


async def test_aclose_with_a_slow_store_keeps_the_loop_running():
    guard = Guard(SlowStore())
    for _ in range(5):
        guard.record("a", success=True, latency_s=0.1)
    _, lag = await _max_lag_while(guard.aclose())
    assert lag < 0.1
    assert guard.store.count_calls("a") == 5


@pytest.mark.parametrize("name", ["flush", "drain", "close", "stats", "change", "evaluate", "propose", "approve",
                                  "promote", "rollback", "request", "pause", "resume", "pin", "unpin", "revert",
                                  "changes", "versions", "trail",
                                  "verify_trail"])
def test_every_blocking_control_call_has_an_async_twin_that_says_so(name):
    assert asyncio.iscoroutinefunction(getattr(Guard, f"a{name}"))
    assert "Blocks" in (getattr(Guard, name).__doc__ or "") or "blocks" in (getattr(Guard, name).__doc__ or "")
