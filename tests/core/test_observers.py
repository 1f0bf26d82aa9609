"""Observers see every call on the caller's thread, feedback, and every trail event."""

import threading

from sil_core import DictConfigAdapter, Guard, current_call


class Spy:
    def __init__(self):
        self.started, self.ended, self.feedback, self.events = [], [], [], []

    def call_started(self, info):
        self.started.append((info.target, info.version, info.arm, threading.get_ident()))
        return {"info": info, "thread": threading.get_ident()}

    def call_ended(self, state, record):
        self.ended.append((state["thread"] == threading.get_ident(), record))

    def feedback_given(self, fb):
        self.feedback.append(fb)

    def trail_event(self, event):
        self.events.append(event)


def test_calls_feedback_and_decisions_are_observed():
    g = Guard("memory://", flush_interval=0.01, refresh_interval=0.01)
    spy = Spy()
    g.add_observer(spy)
    adapter = DictConfigAdapter({"agent": {"prompt": "v1"}})

    @g.track("agent")
    def agent(fail=False):
        current_call().metrics["tokens_out"] = 7
        if fail:
            raise ValueError("no")
        return "ok"

    agent()
    try:
        agent(fail=True)
    except ValueError:
        pass
    with g.call("agent") as call:
        pass
    g.feedback(call.call_id, score=0.5)
    change = g.propose("agent", {"prompt": "v2"}, adapter=adapter, mode="canary")
    assert g.rollback("agent", reason="by hand") is True
    g.drain()

    assert [s[0] for s in spy.started] == ["agent"] * 3
    assert all(same for same, _ in spy.ended)
    records = [r for _, r in spy.ended]
    assert [r.outcome for r in records] == ["ok", "error", "ok"]
    assert records[0].metrics == {"tokens_out": 7} and isinstance(records[0].id, str)
    assert records[2].id == call.call_id
    stored = {r.id for r in g.store.read_calls("agent", limit=10)}
    assert {r.id for r in records} == stored  # the ids observers saw are the stored ones
    assert spy.feedback[0].call_id == call.call_id and spy.feedback[0].score == 0.5
    types = [e["type"] for e in spy.events]
    assert types == ["change_proposed", "change_applied", "rollback_started", "rollback_succeeded"]
    assert all(e["change_id"] == change.id for e in spy.events )
    g.close()


def test_a_broken_observer_never_breaks_a_call_and_can_be_removed():
    from sil_core._internal.failopen import error_counts

    class Broken:
        def call_started(self, info):
            raise RuntimeError("boom")

        def call_ended(self, state, record):
            raise RuntimeError("boom")

    g = Guard("memory://")
    broken = Broken()
    g.add_observer(broken)
    before = error_counts["observer.call_started"]

    @g.track("t")
    def f():
        return 41 + 1

    assert f() == 42
    assert error_counts["observer.call_started"] == before + 1
    g.remove_observer(broken)
    assert f() == 42
    assert error_counts["observer.call_started"] == before + 1
    assert g.stats("t").n == 2
    g.close()


def test_the_fast_lane_is_off_while_observed():
    g = Guard("memory://")
    rec = g.recorder("node")
    rec.put(rec.end(rec.begin(), 0.0, 0.01))
    g.flush()
    g.view("node")
    assert rec.plain() is True

    class Decisions:  # watches decisions only: calls keep their fast lane
        def trail_event(self, event):
            pass

    g.add_observer(Decisions())
    assert rec.plain() is True
    spy = Spy()
    g.add_observer(spy)
    assert rec.plain() is False
    g.remove_observer(spy)
    assert rec.plain() is True
    g.close()
