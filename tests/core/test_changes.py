"""The change lifecycle end to end: canary and switch, promotion, rollback, the seed's
lifecycle bugs (B2, B3, B4, B8), manual controls and the trail."""

from __future__ import annotations

import asyncio
import json
import random

import pytest

from sil_core import (
    DictConfigAdapter,
    Guard,
    InvalidTransition,
    JsonFileConfigAdapter,
    RolloutPolicy,
    State,
    current_call,
)

FAST = RolloutPolicy(min_calls=20, step_calls=20, horizon=400)


@pytest.fixture(autouse=True)
def deterministic_routing():
    """Canary routing without a key draws from ``random``: seed it, so each test is one
    fixed scenario (the false-rollback rate is measured in benchmarks/detection.py)."""
    state = random.getstate()
    random.seed(20261126)
    yield
    random.setstate(state)


@pytest.fixture
def adapter():
    return DictConfigAdapter({"writer": {"prompt": "good", "temperature": 0.2}})


@pytest.fixture
def guard(adapter):
    g = Guard("memory://", adapter=adapter, policy=FAST, flush_interval=60, refresh_interval=0)
    yield g
    g.close()


def make_agent(guard, rng, *, bad_rate=0.6, good_rate=0.02):
    @guard.track("writer")
    def write(user=None):
        config = current_call().config
        rate = bad_rate if config["prompt"] == "bad" else good_rate
        if rng.random() < rate:
            raise RuntimeError("the model produced garbage")
        return config["prompt"]

    return write


def drive(guard, fn, calls, *, every=10, until=None):
    """Call ``fn`` ``calls`` times, judging every ``every`` calls (as the background would)."""
    for i in range(calls):
        try:
            fn()
        except RuntimeError:
            pass
        if (i + 1) % every == 0:
            guard.evaluate("writer")
            change = guard.change("writer")
            if until is not None and change.state in until:
                return change
    return guard.change("writer")


def types(guard, target="writer"):
    return [e["type"] for e in guard.trail(target)]


def test_a_harmful_canary_is_rolled_back_and_refused_again(guard, adapter):
    write = make_agent(guard, random.Random(1))
    change = guard.propose("writer", {"prompt": "bad"})
    assert change.state in (State.CANARY, State.SWITCHED) and change.mode == "canary" and change.weight == FAST.ramp[0]
    change = drive(guard, write, 2000, until={State.ROLLED_BACK})
    assert change.state == State.ROLLED_BACK
    assert change.verdict.kind == "regressed" and change.verdict.metric in ("success_rate", "tripwire")
    ev = change.verdict.evidence
    assert ev["n"]["candidate"] >= 5 and "alpha" in ev
    assert adapter.configs["writer"] == {"prompt": "good", "temperature": 0.2}  # never applied
    assert [t for t in types(guard) if t != "arm_weight_changed"] == \
        ["change_proposed", "change_applied", "rollback_started", "rollback_succeeded"]
    # after a rollback the same patch is refused during the cooldown (no oscillation)
    again = guard.propose("writer", {"prompt": "bad"})
    assert again.state == State.REJECTED and "cooldown" in again.reason
    assert guard.verify_trail().ok


def test_a_harmless_canary_ramps_up_and_is_promoted(guard, adapter):
    write = make_agent(guard, random.Random(2))
    guard.propose("writer", {"temperature": 0.3})
    change = drive(guard, write, 6000, until={State.PROMOTED, State.ROLLED_BACK})
    assert change.state == State.PROMOTED
    assert adapter.configs["writer"] == {"prompt": "good", "temperature": 0.3}
    weights = [e["data"]["weight"] for e in guard.trail("writer") if e["type"] == "arm_weight_changed"]
    assert weights == list(FAST.ramp[1:])
    assert types(guard)[-1] == "promoted"
    # the promoted version now serves every call, without an arm
    with guard.call("writer") as call:
        pass
    assert call.version == change.candidate_version and call.arm is None and call.config["temperature"] == 0.3


def test_canary_routing_is_deterministic_per_key(guard):
    guard.propose("writer", {"prompt": "v2"}, policy=FAST.override(ramp=(0.5,)))
    arms = {}
    for _ in range(3):
        for user in range(50):
            with guard.call("writer", key=f"user-{user}") as call:
                arms.setdefault(user, set()).add(call.arm)
    assert all(len(a) == 1 for a in arms.values())
    assert 10 < sum(1 for a in arms.values() if a == {"candidate"}) < 40
    with guard.call("writer", key="user-1") as call:
        assert call.config["prompt"] == ("v2" if call.arm == "candidate" else "good")


def test_switch_mode_restores_the_json_file_byte_for_byte(tmp_path):
    path = tmp_path / "agent.json"
    original = b'{"prompt":   "good",\n "model": "m-1"}\n'  # formatting json.dumps would not produce
    path.write_bytes(original)
    adapter = JsonFileConfigAdapter(path)
    rng = random.Random(3)
    with Guard("memory://", adapter=adapter, policy=FAST, flush_interval=60, refresh_interval=0) as g:
        for _ in range(60):  # a baseline before the change
            g.record("agent", success=rng.random() > 0.02, latency_s=0.1)

        @g.track("agent")
        def agent():
            config = json.loads(path.read_text())
            if config["prompt"] == "bad" and rng.random() < 0.7:
                raise RuntimeError("bad output")

        change = g.propose("agent", {"prompt": "bad"}, mode="switch")
        assert change.state in (State.CANARY, State.SWITCHED) and change.weight == 1.0
        assert json.loads(path.read_text())["prompt"] == "bad"
        for _ in range(300):
            try:
                agent()
            except RuntimeError:
                pass
            if g.evaluate("agent") and g.change("agent").state not in (State.CANARY, State.SWITCHED):
                break
        assert g.change("agent").state == State.ROLLED_BACK
    assert path.read_bytes() == original


def test_one_change_in_flight_a_second_proposal_never_overwrites_the_backup(guard, adapter):
    """Seed bug B3: a new patch while one is pending overwrote the backup."""
    first = guard.propose("writer", {"prompt": "bad"}, mode="switch")
    assert first.state in (State.CANARY, State.SWITCHED)
    second = guard.propose("writer", {"temperature": 0.9}, mode="switch")
    assert second.state == State.REJECTED and "in flight" in second.reason
    assert adapter.configs["writer"] == {"prompt": "bad", "temperature": 0.2}  # second not applied
    assert guard.rollback("writer")
    assert adapter.configs["writer"] == {"prompt": "good", "temperature": 0.2}  # the true baseline


def test_a_promoted_change_is_never_rolled_back_by_a_later_outage(guard, adapter):
    """Seed bug B2: an outage weeks later rolled back a long-confirmed change."""
    write = make_agent(guard, random.Random(4), good_rate=0.0)
    guard.propose("writer", {"temperature": 0.25})
    assert drive(guard, write, 6000, until={State.PROMOTED}).state == State.PROMOTED
    heard = []
    guard.on_trigger(heard.append)

    @guard.track("writer")
    def outage():
        raise ConnectionError("provider down")

    for _ in range(20):
        with pytest.raises(ConnectionError):
            outage()
        guard.evaluate("writer")
    guard.drain()
    assert guard.change("writer").state == State.PROMOTED
    assert adapter.configs["writer"]["temperature"] == 0.25
    assert "rollback_started" not in types(guard)
    assert heard and heard[0]["type"] == "failure_trigger"  # the outage is reported instead


class FlakyAdapter(DictConfigAdapter):
    def __init__(self, configs, failures):
        super().__init__(configs)
        self.failures = failures
        self.rollback_calls = 0

    def rollback_config(self, agent_id, backup_config):
        self.rollback_calls += 1
        if self.rollback_calls <= self.failures:
            raise OSError("config service unavailable")
        super().rollback_config(agent_id=agent_id, backup_config=backup_config)


def test_a_failed_restore_is_recorded_once_retried_and_never_called_a_success():
    """Seed bug B4: a failed restore wrote a 'rollback' and alerted on every later call."""
    from sil_core.testing import ManualClock

    adapter = FlakyAdapter({"writer": {"prompt": "good"}}, failures=3)
    alerts = []

    class Collect:
        def notify(self, event):
            alerts.append(event["type"])

    clock = ManualClock(1_000_000.0)
    with Guard("memory://", adapter=adapter, policy=FAST, notifiers=[Collect()], flush_interval=60,
               refresh_interval=0, clock=clock) as g:
        g.propose("writer", {"prompt": "bad"}, mode="switch")
        assert g.rollback("writer") is False
        change = g.change("writer")
        assert change.state == State.RESTORE_FAILED and change.restore_attempts == 1
        for _ in range(10):  # later calls and evaluations before the backoff: nothing new
            g.evaluate("writer")
        assert adapter.rollback_calls == 1
        for _ in range(5):  # time passes: bounded, backed-off retries until it works
            clock.advance(400)
            g.evaluate("writer")
        g.drain()
        assert g.change("writer").state == State.ROLLED_BACK
        assert adapter.rollback_calls == 4 and adapter.configs["writer"] == {"prompt": "good"}
        assert types(g) == ["change_proposed", "change_applied", "rollback_started", "restore_failed",
                            "rollback_succeeded"]
        assert alerts.count("restore_failed") == 1 and alerts.count("rollback_succeeded") == 1


class NoneAdapter(DictConfigAdapter):
    def apply_config(self, agent_id, config_patch):
        super().apply_config(agent_id=agent_id, config_patch=config_patch)  # forgets `return True`


def test_apply_config_returning_none_is_not_success():
    """Seed bug B8: `applied is not False` counted None as applied."""
    with Guard("memory://", adapter=NoneAdapter({"a": {"x": 1}}), flush_interval=60) as g:
        change = g.propose("a", {"x": 2}, mode="switch")
        assert change.state == State.REJECTED and "returned None" in change.reason
        assert "adapter_error" in types(g, "a")


def test_the_tripwire_acts_before_min_calls(adapter):
    with Guard("memory://", adapter=adapter, policy=RolloutPolicy(min_calls=100, tripwire_consecutive=5),
               flush_interval=60, refresh_interval=0) as g:
        for _ in range(100):
            g.record("writer", success=True, latency_s=0.1)
        g.propose("writer", {"prompt": "broken"}, mode="switch")

        @g.track("writer")
        def broken():
            raise RuntimeError("500")

        for i in range(1, 6):
            with pytest.raises(RuntimeError):
                broken()
            g.evaluate("writer")
            g.drain()  # the flusher may have judged the same batch in the background too
            state = g.change("writer").state
            assert state == (State.ROLLED_BACK if i == 5 else State.SWITCHED), (i, state)
        assert g.change("writer").verdict.metric == "tripwire"


def test_manual_controls_and_invalid_transitions(guard, adapter):
    guard.propose("writer", {"prompt": "v2"})
    assert guard.pause("writer") and guard.change("writer").state == State.PAUSED
    assert guard.resume("writer") and guard.change("writer").state in (State.CANARY, State.SWITCHED)
    assert guard.promote("writer") and guard.change("writer").state == State.PROMOTED
    assert adapter.configs["writer"]["prompt"] == "v2"
    assert guard.rollback("writer") is False  # idempotent: nothing in flight
    with pytest.raises(InvalidTransition):
        guard.pause("writer")
    versions = [v["version"] for v in guard.versions("writer")]
    assert len(versions) == 2
    guard.pin("writer", versions[0])
    assert adapter.configs["writer"]["prompt"] == "good"
    with guard.call("writer") as call:
        assert call.version == versions[0]
    assert [t for t in types(guard) if t in ("paused", "resumed", "promoted", "pinned")] == \
        ["paused", "resumed", "promoted", "pinned"]


def test_approval_gate(guard, adapter):
    change = guard.propose("writer", {"prompt": "v2"}, approve=False)
    assert change.state == State.PROPOSED
    with guard.call("writer") as call:
        assert call.arm is None  # nothing served before approval
    assert guard.approve("writer").state in (State.CANARY, State.SWITCHED)


def test_observe_only_records_the_verdict_but_never_acts(adapter):
    policy = FAST.override(observe_only=True)
    with Guard("memory://", adapter=adapter, policy=policy, flush_interval=60, refresh_interval=0) as g:
        write = make_agent(g, random.Random(5))
        g.propose("writer", {"prompt": "bad"})
        drive(g, write, 1500)
        change = g.change("writer")
        assert change.state in (State.CANARY, State.SWITCHED)
        verdicts = [e for e in g.trail("writer") if e["type"] == "verdict"]
        assert len(verdicts) == 1 and verdicts[0]["data"]["would"] == "rollback"


@pytest.mark.parametrize("choice,expected", [("hold", State.PAUSED), ("rollback", State.ROLLED_BACK),
                                             ("keep", State.PROMOTED)])
def test_on_inconclusive_at_the_horizon(adapter, choice, expected):
    # success_tolerance 0 and a tiny horizon: the test cannot show non-inferiority in time
    policy = RolloutPolicy(min_calls=10, step_calls=10, ramp=(0.5,), horizon=40, success_tolerance=0.0,
                           on_inconclusive=choice)
    with Guard("memory://", adapter=adapter, policy=policy, flush_interval=60, refresh_interval=0) as g:
        write = make_agent(g, random.Random(6), good_rate=0.1)
        g.propose("writer", {"temperature": 0.21})
        change = drive(g, write, 400, until={State.PAUSED, State.ROLLED_BACK, State.PROMOTED})
        assert change.state == expected
        assert change.verdict.metric == "horizon"


async def test_async_calls_serve_arms_and_are_judged(adapter):
    with Guard("memory://", adapter=adapter, policy=FAST, flush_interval=60, refresh_interval=0) as g:
        rng = random.Random(7)

        @g.track("writer")
        async def write():
            await asyncio.sleep(0)
            if current_call().config["prompt"] == "bad" and rng.random() < 0.8:
                raise RuntimeError("garbage")

        g.propose("writer", {"prompt": "bad"})
        for i in range(2000):
            try:
                await write()
            except RuntimeError:
                pass
            if i % 10 == 9:
                g.evaluate("writer")
                if g.change("writer").state == State.ROLLED_BACK:
                    break
        assert g.change("writer").state == State.ROLLED_BACK


def test_background_judging_without_explicit_evaluate(adapter):
    """The normal deployment: nobody calls evaluate(); the flusher judges and acts."""
    import time

    with Guard("memory://", adapter=adapter, policy=FAST, flush_interval=0.01, refresh_interval=0.01) as g:
        write = make_agent(g, random.Random(8), bad_rate=1.0)
        g.propose("writer", {"prompt": "bad"})
        deadline = time.time() + 20
        while g.change("writer").state != State.ROLLED_BACK and time.time() < deadline:
            try:
                write()
            except RuntimeError:
                pass
        assert g.change("writer").state == State.ROLLED_BACK


def test_strategy_proposes_on_trigger_and_hears_the_verdict(adapter):
    heard = []

    class Strategy:
        def analyze(self, agent_id, traces, before_metrics=None):
            assert 0 < len(traces) <= 200 and "success_rate" in before_metrics
            return {"temperature": 0.0}

        def on_verdict(self, change, verdict):
            heard.append((change.state, verdict.kind))

    with Guard("memory://", adapter=adapter, strategy=Strategy(), policy=FAST, flush_interval=60,
               refresh_interval=0, strategy_inline=True) as g:
        g.thresholds.set_manual_threshold("writer", failure_threshold=3, min_failure_rate=0.1)

        @g.track("writer")
        def flaky(fail):
            if fail:
                raise RuntimeError("x")

        for i in range(10):
            try:
                flaky(i % 2 == 0)
            except RuntimeError:
                pass
            g.flush()
        change = g.change("writer")
        assert change is not None and change.actor.startswith("strategy:") and change.state in (State.CANARY, State.SWITCHED)
        assert g.rollback("writer")
        assert heard == [(State.ROLLED_BACK, "regressed")]


def test_a_raising_strategy_is_recorded_not_raised(adapter):
    class Broken:
        def analyze(self, agent_id, traces, before_metrics=None):
            raise ValueError("strategy bug")

    with Guard("memory://", adapter=adapter, strategy=Broken(), flush_interval=60, strategy_inline=True) as g:
        g.thresholds.set_manual_threshold("writer", failure_threshold=1, min_failure_rate=0.0)
        g.record("writer", success=False, latency_s=0.1)
        g.flush()
        assert "strategy_error" in types(g)
        assert g.change("writer") is None


def test_concurrent_failing_threads_propose_exactly_one_change(adapter):
    """Seed bug C2: 8 threads failing at once applied 8 patches."""
    import threading

    proposals = []

    class Strategy:
        def analyze(self, agent_id, traces, before_metrics=None):
            proposals.append(1)
            return {"temperature": 0.0}

    guards = [Guard("memory://", adapter=adapter, strategy=Strategy(), flush_interval=60, strategy_inline=True)]
    g = guards[0]
    g.thresholds.set_manual_threshold("writer", failure_threshold=1, min_failure_rate=0.0, cooldown_hours=0)
    barrier = threading.Barrier(8)

    def fail():
        barrier.wait()
        g.record("writer", success=False, latency_s=0.1)
        g.flush()

    threads = [threading.Thread(target=fail) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    applied = [e for e in g.trail("writer") if e["type"] == "change_applied"]
    assert len(applied) == 1
    g.close()


def test_two_threads_of_one_worker_roll_back_once():
    import threading
    import time

    class Slow(DictConfigAdapter):
        calls = 0

        def rollback_config(self, agent_id, backup_config):
            Slow.calls += 1
            time.sleep(0.2)
            super().rollback_config(agent_id=agent_id, backup_config=backup_config)

    with Guard("memory://", adapter=Slow({"a": {"x": 1}}), flush_interval=60) as g:
        g.propose("a", {"x": 2}, mode="switch")
        results = []
        threads = [threading.Thread(target=lambda: results.append(g.rollback("a"))) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(results) == [False, True] and Slow.calls == 1
        assert types(g, "a").count("rollback_started") == 1


def test_json_file_adapter_keeps_exact_bytes_per_file(tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_bytes(b'{"prompt":  "good"}\n')
    b.write_bytes(b'{"prompt": "good"}\n')
    adapter = JsonFileConfigAdapter(tmp_path, per_target=True)
    base = adapter.get_config("a")
    adapter.apply_config("a", {"prompt": "bad"})
    adapter.get_config("b")
    adapter.rollback_config("a", base)
    assert a.read_bytes() == b'{"prompt":  "good"}\n'
