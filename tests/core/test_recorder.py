"""The Recorder, the integration's hot path: every call recorded once, on the fast lane and
off it, failures included, under batched and sync durability."""

from __future__ import annotations

import asyncio
import time

import pytest

from sil_core import DictConfigAdapter, Guard, current_call
from sil_core.integration import Arm
from sil_core.records import Outcome


def run(rec, fn, key=None):
    ts, t0 = time.time(), time.perf_counter()
    begun = None if rec.plain() else rec.begin(key=key)
    try:
        result = fn()
    except BaseException as exc:
        rec.put(rec.end(begun, ts, time.perf_counter() - t0, exc))
        raise
    if begun is None:
        rec.ok(ts, time.perf_counter() - t0)
    else:
        rec.put(rec.end(begun, ts, time.perf_counter() - t0))
    return result


@pytest.mark.parametrize("durability", ["batched", "sync"])
def test_every_call_is_recorded_once_failures_included(durability):
    with Guard("memory://", durability=durability, flush_interval=60) as g:
        rec = g.recorder("tool")
        assert g.recorder("tool") is rec
        lanes = []
        for i in range(50):
            lanes.append(rec.plain())
            try:
                run(rec, lambda: 1 / (i % 5))
            except ZeroDivisionError:
                pass
        g.flush()
        s = g.stats("tool")
        assert (s.n, s.successes, s.failures) == (50, 40, 10)
        assert sum(lanes) >= 45  # after the first read, the fast lane
        errors = [r for r in g.store.read_calls("tool", limit=100) if r.outcome == Outcome.ERROR]
        assert {r.error_type for r in errors} == {"ZeroDivisionError"} and len({r.id for r in errors}) == 10


def test_a_canary_routes_by_key_and_sets_the_current_call():
    adapter = DictConfigAdapter({"tool": {"v": 1}})
    with Guard("memory://", adapter=adapter, flush_interval=60, refresh_interval=0) as g:
        rec = g.recorder("tool")
        g.propose("tool", {"v": 2})
        seen = {}
        for i in range(200):
            key = f"user-{i % 20}"
            begun = rec.begin(key=key)
            seen.setdefault(key, set()).add((current_call().arm, current_call().config["v"]))
            record = rec.end(begun, time.time(), 0.01, attempt=2, call_id=f"c{i}")
            assert record.id == f"c{i}" and record.attempt == 2
            rec.put(record)
        assert all(len(arms) == 1 for arms in seen.values())  # one key, one arm
        assert {a for arms in seen.values() for a, _ in arms} <= {Arm.BASELINE, Arm.CANDIDATE}
        assert all(v == (2 if a == Arm.CANDIDATE else 1) for arms in seen.values() for a, v in arms)
        g.flush()
        assert g.store.count_calls("tool") == 200 and g.store.get_call("c7") is not None


def test_aput_under_concurrency():
    async def main():
        async with Guard("memory://", durability="sync") as g:
            rec = g.recorder("tool")

            async def one(i):
                begun = rec.begin(key=i)
                await asyncio.sleep(0.001)
                await rec.aput(rec.end(begun, time.time(), 0.001))

            await asyncio.gather(*(one(i) for i in range(20)))
            return g.store.count_calls("tool")

    assert asyncio.run(main()) == 20


def test_done_records_a_begun_success_cheaply_or_in_full_when_it_was_asked_for_something():
    from sil_core import Guard, current_call, last_call

    g = Guard("memory://")
    rec = g.recorder("n")
    rec.put(rec.end(rec.begin(), 0.0, 0.01))
    g.flush()
    begun = rec.begin()
    asked = current_call().call_id  # the id asked for inside: the record carries it
    rec.done(begun, 1.0, 0.02)
    assert last_call().call_id == asked and current_call() is None
    begun = rec.begin()
    current_call().metrics["tokens_out"] = 5  # a metric: the full path
    rec.done(begun, 2.0, 0.03)
    rec.done(rec.begin(), 3.0, 0.04, metrics={"cost_usd": 0.1})
    g.flush()
    records = {r.ts: r for r in g.store.read_calls("n", limit=10)}
    assert records[1.0].id == asked and records[1.0].outcome == "ok"
    assert records[2.0].metrics == {"tokens_out": 5.0} and records[3.0].metrics == {"cost_usd": 0.1}
    assert g.stats("n").n == 4
    g.close()
