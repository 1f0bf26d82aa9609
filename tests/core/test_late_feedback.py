"""Feedback that arrives late: a harmful change is not promoted on calls nobody has judged
yet, and a promoted version that regresses afterwards is alerted (or reverted)."""

from __future__ import annotations

import collections
import random
import time

import pytest

from sil_core import DictConfigAdapter, Guard, RolloutPolicy, State
from sil_core.changes.judging import WATCH_EVERY_S
from sil_core.testing import ManualClock

DELAY_S = 2.0  # the thumbs-downs arrive this long after the answer


def drive(g: Guard, *, until_s: float, bad_rate: float, rng: random.Random) -> str:
    """Serve users; a bad candidate answer gets its thumbs-down DELAY_S later."""
    due: collections.deque = collections.deque()
    deadline = time.monotonic() + until_s
    i = 0
    while time.monotonic() < deadline:
        with g.call("bot", key=f"user-{i}") as call:
            bad = call.arm == "candidate" and rng.random() < bad_rate
        if bad:
            due.append((time.monotonic() + DELAY_S, call.call_id))
        while due and due[0][0] <= time.monotonic():
            g.feedback(due.popleft()[1], success=False)
        i += 1
        time.sleep(0.0005)
        change = g.change("bot") if i % 25 == 0 else None
        if change is not None and change.state not in (State.CANARY, State.SWITCHED):
            return change.state
    return g.change("bot").state


@pytest.mark.parametrize("window_s, expected", [(0.0, State.PROMOTED), (3.0, State.ROLLED_BACK)])
def test_a_harmful_change_judged_only_by_late_feedback_is_not_promoted_with_a_window(window_s, expected, tmp_path):
    """The control (no window) shows the failure: every call looks fine when it returns, so
    the change is promoted before its thumbs-downs arrive. With a feedback window longer
    than their delay, the promotion waits for them and the change is rolled back."""
    policy = RolloutPolicy(min_calls=30, ramp=(0.5,), tripwire_consecutive=1000, feedback_window_s=window_s,
                           watch_hours=0)
    with Guard(f"sqlite:///{tmp_path / 's.db'}", adapter=DictConfigAdapter({"bot": {"p": 1}}), policy=policy,
               flush_interval=0.05, refresh_interval=0.05) as g:
        for _ in range(60):
            with g.call("bot"):
                pass
        g.propose("bot", {"p": 2})
        state = drive(g, until_s=30.0, bad_rate=0.7, rng=random.Random(7))
        g.drain()
        assert g.change("bot").state == expected, (state, g.change("bot").reason)


@pytest.mark.parametrize("action", ["alert", "revert"])
def test_a_promoted_version_that_regresses_is_alerted_once(action):
    clock = ManualClock()  # the watch judges at most every WATCH_EVERY_S: time moves instead of sleeping
    heard = []
    adapter = DictConfigAdapter({"bot": {"p": 1}})
    policy = RolloutPolicy(min_calls=30, ramp=(0.5,), on_watch_regression=action)
    g = Guard("memory://", adapter=adapter, policy=policy, flush_interval=60, refresh_interval=0, clock=clock)
    g.notifiers.append(type("N", (), {"notify": lambda self, e: heard.append(e)})())
    for _ in range(200):
        with g.call("bot"):
            pass
    change = g.propose("bot", {"p": 2})
    assert g.promote("bot") and adapter.configs["bot"] == {"p": 2}
    for i in range(300):  # after the promotion, most answers are judged bad
        with g.call("bot") as call:
            call.success = i % 4 == 0
        if i % 50 == 49:
            clock.advance(WATCH_EVERY_S)
            g.evaluate("bot")
    g.drain()
    events = [e for e in g.trail("bot") if e["type"] == "watch_regressed"]
    assert len(events) == 1 and events[0]["data"]["action"] == action
    assert [e["type"] for e in heard].count("watch_regressed") == 1
    if action == "revert":
        assert adapter.configs["bot"] == {"p": 1} and g.change("bot").kind == "revert"
    else:
        assert adapter.configs["bot"] == {"p": 2} and g.change("bot").id == change.id
    assert g.verify_trail().ok
    g.close()


def test_a_healthy_promoted_version_is_not_alerted():
    clock = ManualClock()
    with Guard("memory://", adapter=DictConfigAdapter({"bot": {"p": 1}}), policy=RolloutPolicy(min_calls=30),
               flush_interval=60, refresh_interval=0, clock=clock) as g:
        rng = random.Random(3)
        for _ in range(200):
            with g.call("bot") as call:
                call.success = rng.random() > 0.05
        g.propose("bot", {"p": 2})
        g.promote("bot")
        for i in range(600):
            with g.call("bot") as call:
                call.success = rng.random() > 0.05
            if i % 100 == 99:
                clock.advance(WATCH_EVERY_S)
                g.evaluate("bot")
        g.drain()
        assert [e["type"] for e in g.trail("bot")].count("watch_regressed") == 0
