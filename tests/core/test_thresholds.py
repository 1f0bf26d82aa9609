"""Adaptive thresholds and the failure trigger (fixing seed bugs A4, A5, C3)."""

from __future__ import annotations

import time

from sil_core import PROFILES, AdaptiveThreshold, Guard


def test_profiles_by_frequency():
    t = AdaptiveThreshold()
    assert t.profile("a", calls_24h=50, total_calls=500).name == "high"
    assert t.profile("a", calls_24h=5, total_calls=500).name == "medium"
    assert t.profile("a", calls_24h=1, total_calls=500).name == "low"
    # a brand-new target is not "low" after one call (seed A4)
    assert t.profile("fresh", calls_24h=1, total_calls=1).name == "medium"


def test_critical_only_when_marked():
    t = AdaptiveThreshold(critical={"payments"})
    for name in ("product-search", "reproducer", "monitoring-digest", "prod-bot"):
        assert not t.profile(name, calls_24h=5, total_calls=50).is_critical  # seed A5
    assert t.profile("payments", calls_24h=5, total_calls=50).name == "critical"
    # a manual is_critical is honoured even with other manual values (seed A5)
    t.set_manual_threshold("x", cooldown_hours=1, is_critical=True)
    p = t.profile("x", calls_24h=5, total_calls=50)
    assert p.is_critical and p.failure_threshold == 1 and p.cooldown_hours == 1 and p.source == "manual"
    assert t.get_threshold("x", calls_24h=5) == (1, 24, 1)


def test_rate_and_count_both_needed():
    high = PROFILES["high"]
    assert not high.triggers(failures=20, calls=20_000)  # 0.1 % error rate: no trigger forever
    assert high.triggers(failures=20, calls=100)
    assert not high.triggers(failures=4, calls=4)  # below the count


def test_manual_overrides_persist_atomically_and_cross_process(tmp_path):
    a = AdaptiveThreshold(tmp_path)
    a.set_manual_threshold("agent", failure_threshold=7, analysis_window_hours=12)
    b = AdaptiveThreshold(tmp_path)  # another process would see the same file
    assert b.profile("agent", calls_24h=5, total_calls=50).failure_threshold == 7
    a.set_manual_threshold("agent", failure_threshold=9)
    assert b.profile("agent", calls_24h=5, total_calls=50).failure_threshold == 9
    assert b.profile("agent", calls_24h=5, total_calls=50).analysis_window_hours == 12
    a.clear_manual_threshold("agent")
    assert b.profile("agent", calls_24h=5, total_calls=50).source == "auto"


def test_corrupt_threshold_file_does_not_break_construction(tmp_path):
    (tmp_path / "adaptive_thresholds.json").write_text("{not json")
    t = AdaptiveThreshold(tmp_path)  # the seed raised JSONDecodeError here (C3)
    assert t.profile("a", calls_24h=5, total_calls=50).name == "medium"


def test_seed_style_profile_from_history():
    now = time.time()
    from sil_core.records import format_ts

    history = [{"timestamp": format_ts(now - i * 60), "success": True} for i in range(20)]
    profile = AdaptiveThreshold().get_agent_profile("a", history)
    assert profile["frequency"] == "high" and profile["tasks_per_day"] == 20


def test_trigger_fires_once_per_cooldown_and_notifies():
    events = []

    class Collect:
        def notify(self, event):
            events.append(event)

    g = Guard("memory://", notifiers=[Collect()])
    heard = []
    g.on_trigger(heard.append)

    @g.track("agent")
    def agent(ok):
        if not ok:
            raise RuntimeError("provider down")
        return ok

    for i in range(30):
        try:
            agent(i % 3 != 0)  # one third failing
        except RuntimeError:
            pass
        g.flush()
    g._events.drain(2)
    assert len(heard) == 1, heard  # cooldown: once, not on every later failure
    event = heard[0]
    assert event["type"] == "failure_trigger" and event["target"] == "agent"
    assert event["failures"] >= event["profile"]["failure_threshold"]
    assert [e["type"] for e in events] == ["failure_trigger"]
    g.close()


def test_busy_target_with_rare_errors_never_triggers():
    g = Guard("memory://")
    heard = []
    g.on_trigger(heard.append)
    now = time.time()
    for i in range(3000):
        g.record("busy", success=i % 1000 != 0, latency_s=0.01, ts=now - i)
    g.flush()
    assert heard == []
    g.close()
