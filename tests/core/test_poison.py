"""One bad value never stops recording: values are checked at the boundary, and a record a
store still refuses is set aside while every other record is written."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest

from sil_core import Guard
from sil_core._internal import validate
from sil_core.store import MemoryStore

from ..conftest import store_url


def _latency(value):
    def poison(g):
        with g.call("agent") as call:
            call.latency_s = value
    return poison


def _score(value):
    def poison(g):
        with g.call("agent") as call:
            call.score = value
    return poison


def _context(value):
    def poison(g):
        with g.call("agent", context={"note": value}):
            pass
    return poison


def _error(value):
    def poison(g):
        with pytest.raises(ValueError):
            with g.call("agent"):
                raise ValueError(value)
    return poison


def _feedback_score(value):
    def poison(g):
        with g.call("agent") as call:
            pass
        g.feedback(call.call_id, score=value)
    return poison


def _record_latency(value):
    def poison(g):
        g.record("agent", success=True, latency_s=value)
    return poison


POISONS = {
    "latency inf": _latency(math.inf), "latency nan": _latency(math.nan), "latency negative": _latency(-1.0),
    "score nan": _score(math.nan), "score inf": _score(-math.inf), "score text": _score("high"),
    "context lone surrogate": _context("bad \ud800 text"), "context NUL": _context("a\x00b"),
    "error lone surrogate": _error("broken \udfff"), "feedback score nan": _feedback_score(math.nan),
    "record latency inf": _record_latency(math.inf),
}


@pytest.mark.parametrize("backend", ["memory", "jsonl", "sqlite", "postgresql"])
def test_every_poison_value_then_100_calls_all_stored(backend, tmp_path, request):
    url = store_url(backend, tmp_path, request)
    before = sum(validate.dropped.values())
    with Guard(url, flush_interval=60) as g:
        for name, poison in POISONS.items():
            poison(g)
            assert g.flush(), name  # the batch with the bad value is written
            for _ in range(100):
                with g.call("agent"):
                    pass
            assert g.flush(), name
        stats = g.stats("agent")
        # every call but guard.record's (a record without a usable latency is dropped)
        assert stats.n == len(POISONS) * 101 - 1
        assert g.store.count_calls("agent") == stats.n
        json.dumps(dataclasses.asdict(stats), allow_nan=False)  # a Stats a JSON API can return
        assert stats.score_mean is None
        errors = [r for r in g.store.read_calls("agent", limit=5000) if r.outcome == "error"]
        assert len(errors) == 1 and errors[0].error_message == "broken \ufffd"
    # 3 latencies, 3 scores, 1 feedback score, and guard.record's record without a usable latency
    assert sum(validate.dropped.values()) - before == 8


class PickyStore(MemoryStore):
    """A store that refuses one kind of record (as a database refuses a value it cannot
    store), and takes every other."""

    def write(self, calls, feedback=()):
        if any('"reject-me"' in (r.context or "") for r in calls):
            raise ValueError("this store cannot take that record")
        return super().write(calls, feedback)


def test_a_record_the_store_refuses_is_set_aside_and_the_rest_is_written():
    g = Guard(PickyStore(), flush_interval=60)
    for i in range(40):
        with g.call("agent", context="reject-me" if i == 17 else f"call {i}"):
            pass
    assert g.flush() is True
    for _ in range(100):
        with g.call("agent"):
            pass
    assert g.flush() is True
    assert g.store.count_calls("agent") == 139 and g._writer.set_aside == 1
    g.close()


def test_a_store_that_is_down_keeps_everything_for_later():
    class Down(MemoryStore):
        up = False

        def write(self, calls, feedback=()):
            if not self.up:
                raise ConnectionError("the database is unreachable")
            return super().write(calls, feedback)

    store = Down()
    g = Guard(store, flush_interval=60)
    for _ in range(50):
        with g.call("agent"):
            pass
    assert g.flush(timeout=5) is False and g._writer.set_aside == 0
    store.up = True
    assert g.flush() is True and store.count_calls("agent") == 50
    g.close()


def test_broken_text_in_a_decision_keeps_the_trail_whole_and_a_broken_patch_is_refused_clearly():
    from sil_core import ConfigError, DictConfigAdapter, Guard

    g = Guard("memory://")
    adapter = DictConfigAdapter({"t": {"p": 1}})
    g.propose("t", {"p": 2}, adapter=adapter)
    assert g.rollback("t", reason="bad \udcff bytes\x00 here", actor="ops-\ud800") is True
    events = g.trail("t")
    assert [e["type"] for e in events][-2:] == ["rollback_started", "rollback_succeeded"]  # written, not dropped
    assert events[-2]["data"]["verdict"]["reason"] == "bad \ufffd bytes\ufffd here"
    assert events[-1]["actor"] == "ops-\ufffd"
    assert g.verify_trail().ok
    with pytest.raises(ConfigError, match="lone surrogate"):
        g.propose("t", {"p": "caf\udce9"}, adapter=adapter)
    assert g.propose("t", {"p": ("a", "b")}, adapter=adapter).in_flight  # tuples are fine
    g.close()
