"""The seed's public API (``self-improving-loop`` 0.1.x, ``docs/migrating-from-0.1.md``, "What is kept") on
``sil_core.SelfImprovingLoop``: constructor, the result dict, rollback dicts,
``check_and_rollback``, stats, rollback history, thresholds, legacy strategy hooks, and
the async twin."""

from __future__ import annotations

import asyncio
import gc
import inspect

import pytest
import self_improving_loop

import sil_core
from sil_core import DictConfigAdapter, RolloutPolicy, SelfImprovingLoop, State
from sil_core.store import jsonl as jsonl_store

RESULT_KEYS = {"success", "result", "error", "duration_sec", "improvement_triggered", "improvement_applied",
               "rollback_executed"}
ROLLBACK_KEYS = {"agent_id", "reason", "before_metrics", "after_metrics", "backup_id", "success", "restore_applied",
                 "restore_source"}
METRICS_KEYS = {"success_rate", "avg_duration_sec", "total_tasks", "consecutive_failures"}
AGENT_STATS_KEYS = {"agent_id", "total_tasks", "last_improvement", "rollback_count", "rollback_history"}
GLOBAL_STATS_KEYS = {"total_improvements", "agents_improved", "total_rollbacks", "agents_rolled_back"}
HISTORY_KEYS = {"rollback_id", "agent_id", "backup_id", "improvement_id", "timestamp", "config_restored", "reason"}
JSONL_ABSTRACT = inspect.isabstract(jsonl_store.JsonlStore)
QUICK = RolloutPolicy(min_calls=20, step_calls=20, horizon=200)


@pytest.fixture(params=["sqlite", "jsonl"])
def storage(request) -> str:
    if request.param == "jsonl" and JSONL_ABSTRACT:
        pytest.skip("JsonlStore is being extended and is abstract for now")
    return request.param


@pytest.fixture
def make(tmp_path):
    """``make(**kwargs)``: a ``sil_core.SelfImprovingLoop`` in ``tmp_path`` (SQLite unless
    ``storage=`` says otherwise), closed after the test."""
    loops = []

    def factory(data_dir=None, **kwargs):
        kwargs.setdefault("storage", "sqlite")
        kwargs.setdefault("notifier", Collect())
        loop = SelfImprovingLoop(data_dir=str(data_dir or tmp_path / "data"), **kwargs)
        loops.append(loop)
        return loop

    yield factory
    for loop in loops:
        loop.close()


class Collect:
    def __init__(self) -> None:
        self.improvements: list[tuple] = []
        self.rollbacks: list[tuple] = []

    def notify_improvement(self, agent_id, improvements_applied, details=None):
        self.improvements.append((agent_id, improvements_applied))

    def notify_rollback(self, agent_id, reason, metrics=None):
        self.rollbacks.append((agent_id, reason))


class Adapter(DictConfigAdapter):
    def __init__(self, configs: dict, *, fail_restore: bool = False) -> None:
        super().__init__(configs)
        self.fail_restore = fail_restore

    def rollback_config(self, agent_id, backup_config):
        if self.fail_restore:
            raise OSError("config service unavailable")
        super().rollback_config(agent_id=agent_id, backup_config=backup_config)


class PatchOnce:
    def __init__(self, patch: dict) -> None:
        self.patch = patch
        self.calls = 0

    def analyze(self, agent_id, traces, before_metrics=None):
        self.calls += 1
        return dict(self.patch) if self.calls == 1 else None


class LegacyStrategy:
    """The seed's legacy hooks: the strategy owns the config (no ConfigAdapter)."""

    def __init__(self) -> None:
        self.config = {"prompt": "good"}
        self.events: list[str] = []

    def analyze(self, agent_id, traces, before_metrics=None):
        return {"prompt": "bad"}

    def current_config(self, agent_id):
        self.events.append("current_config")
        return dict(self.config)

    def apply(self, agent_id, config_patch):
        self.events.append("apply")
        self.config.update(config_patch)
        return True

    def rollback(self, agent_id, backup_config):
        self.events.append("rollback")
        self.config = dict(backup_config)


def ok():
    return "ok"


def fail():
    raise RuntimeError("provider returned 503")


def every_failure(loop, agent_id="writer", *, cooldown_hours=24):
    loop.adaptive_threshold.set_manual_threshold(agent_id, failure_threshold=1, cooldown_hours=cooldown_hours,
                                                 min_failure_rate=0.0)


def patched_then_failing(loop, agent_id="writer", *, calls=8) -> list[dict]:
    """A few good calls, a failure that applies the patch, then ``calls`` failures (the
    tripwire rolls the patch back); returns every rollback dict reported, the last
    collected by an explicit ``check_and_rollback`` once background judging is done."""
    for _ in range(3):
        loop.execute_with_improvement(agent_id, "task", ok)
    first = loop.execute_with_improvement(agent_id, "task", fail)
    assert first["improvement_applied"] == 1
    reported = [r["rollback_executed"] for r in (loop.execute_with_improvement(agent_id, "task", fail)
                                                 for _ in range(calls)) if r["rollback_executed"]]
    loop.guard.drain()
    last = loop.check_and_rollback(agent_id)
    return reported + ([last] if last else [])


# -- constructor ----------------------------------------------------------------------------
def test_the_signatures_match_the_seed():
    ours, seed = SelfImprovingLoop, self_improving_loop.SelfImprovingLoop
    for name in ("__init__", "execute_with_improvement", "track", "check_and_rollback", "get_improvement_stats"):
        theirs = inspect.signature(getattr(seed, name)).parameters
        mine = inspect.signature(getattr(ours, name)).parameters
        assert list(mine)[: len(theirs)] == list(theirs), name
        for param, p in theirs.items():
            assert mine[param].default == p.default, (name, param)


def test_strategy_and_improvement_strategy_are_aliases(make, tmp_path):
    s = PatchOnce({"x": 1})
    assert make(tmp_path / "one", strategy=s).improvement_strategy is s
    assert make(tmp_path / "two", improvement_strategy=s).improvement_strategy is s
    with pytest.raises(ValueError):
        SelfImprovingLoop(data_dir=str(tmp_path / "three"), strategy=s, improvement_strategy=s, storage="sqlite")


def test_an_unknown_storage_is_a_value_error(tmp_path):
    with pytest.raises(ValueError):
        SelfImprovingLoop(data_dir=str(tmp_path), storage="redis")


def test_the_seed_attributes_exist(make):
    loop = make()
    assert loop.auto_rollback is loop.rollback
    assert isinstance(loop.adaptive_threshold, sil_core.AdaptiveThreshold)
    assert loop.storage == "sqlite" and loop.trace_store is not None and loop.config_adapter is None
    assert isinstance(make(loop.data_dir / "default", notifier=None).notifier, sil_core.TelegramNotifier)


def test_the_seed_names_are_importable_from_sil_core():
    from sil_core import AdaptiveThreshold, ConfigAdapter, TelegramNotifier

    assert isinstance(DictConfigAdapter(), ConfigAdapter)
    notifier = TelegramNotifier(enabled=True)
    for method in ("notify_improvement", "notify_rollback"):
        assert callable(getattr(notifier, method))
    threshold = AdaptiveThreshold()
    threshold.set_manual_threshold("a", failure_threshold=2, analysis_window_hours=12, cooldown_hours=1)
    assert threshold.get_threshold("a", []) == (2, 12, 1)


# -- the call -------------------------------------------------------------------------------
def test_execute_and_track_return_exactly_the_seed_keys(make, storage):
    loop = make(storage=storage)
    good = loop.execute_with_improvement("writer", "task", lambda: {"answer": 42}, context={"user": "ada"})
    assert set(good) == RESULT_KEYS
    assert good["success"] is True and good["result"] == {"answer": 42} and good["error"] is None
    assert good["duration_sec"] >= 0 and good["improvement_triggered"] is False
    assert good["improvement_applied"] == 0 and good["rollback_executed"] is None
    bad = loop.track("writer", "task", fail)
    assert set(bad) == RESULT_KEYS
    assert bad["success"] is False and bad["result"] is None and bad["error"] == "provider returned 503"
    assert loop.guard.stats("writer").n == 2


def test_an_improvement_is_reported_on_the_call_that_applied_it(make, storage):
    adapter = Adapter({"writer": {"prompt": "good"}})
    notifier = Collect()
    loop = make(storage=storage, strategy=PatchOnce({"prompt": "bad"}), config_adapter=adapter, notifier=notifier)
    every_failure(loop)
    r = loop.execute_with_improvement("writer", "task", fail)
    assert r["improvement_triggered"] is True and r["improvement_applied"] == 1
    assert adapter.configs["writer"] == {"prompt": "bad"}
    assert notifier.improvements == [("writer", 1)]
    later = loop.execute_with_improvement("writer", "task", ok)
    assert later["improvement_triggered"] is False and later["improvement_applied"] == 0


def test_a_rollback_dict_has_the_seed_keys(make, storage):
    adapter = Adapter({"writer": {"prompt": "good"}})
    notifier = Collect()
    loop = make(storage=storage, strategy=PatchOnce({"prompt": "bad"}), config_adapter=adapter, notifier=notifier)
    every_failure(loop)
    reported = patched_then_failing(loop)
    assert len(reported) == 1
    r = reported[0]
    assert set(r) == ROLLBACK_KEYS
    assert r["agent_id"] == "writer" and r["reason"] and r["backup_id"]
    assert r["success"] is True and r["restore_applied"] is True and r["restore_source"] == "config_adapter"
    assert set(r["before_metrics"]) == METRICS_KEYS and set(r["after_metrics"]) == METRICS_KEYS
    assert adapter.configs["writer"] == {"prompt": "good"}
    assert notifier.rollbacks == [("writer", r["reason"])]


def test_a_failed_restore_dict_has_the_seed_keys_and_an_error(make):
    adapter = Adapter({"writer": {"prompt": "good"}}, fail_restore=True)
    loop = make(strategy=PatchOnce({"prompt": "bad"}), config_adapter=adapter)
    every_failure(loop)
    reported = patched_then_failing(loop)
    assert len(reported) == 1
    r = reported[0]
    assert set(r) == ROLLBACK_KEYS | {"error"}
    assert r["success"] is False and r["restore_applied"] is False and "config service unavailable" in r["error"]


def test_check_and_rollback(make):
    adapter = Adapter({"writer": {"prompt": "good"}})
    loop = make(strategy=PatchOnce({"prompt": "bad"}), config_adapter=adapter)
    every_failure(loop)
    assert loop.check_and_rollback("writer") is None  # nothing to judge
    loop.execute_with_improvement("writer", "task", fail)
    assert loop.check_and_rollback("writer") is None  # a change in flight, no verdict yet
    loop.guard.rollback("writer")
    r = loop.check_and_rollback("writer")
    assert set(r) == ROLLBACK_KEYS and r["success"] is True and r["backup_id"] == loop.guard.change("writer").id
    assert loop.check_and_rollback("writer") is None  # reported once
    assert adapter.configs["writer"] == {"prompt": "good"}


def test_a_patch_that_hurts_the_success_rate_is_rolled_back_on_statistics(make):
    """The frozen baseline of a switch-mode change is the calls before it. Here the patch
    halves the success rate without ever failing 5 times in a row (so the tripwire never
    fires): the statistical test must roll it back, not promote it at the horizon."""
    adapter = Adapter({"writer": {"prompt": "good"}})
    loop = make(strategy=PatchOnce({"prompt": "bad"}), config_adapter=adapter, policy=QUICK)
    every_failure(loop)
    for _ in range(60):
        loop.execute_with_improvement("writer", "task", ok)
    assert loop.execute_with_improvement("writer", "task", fail)["improvement_applied"] == 1
    reported = []
    for i in range(QUICK.horizon + 20):
        r = loop.execute_with_improvement("writer", "task", fail if i % 2 else ok)
        reported += [r["rollback_executed"]] if r["rollback_executed"] else []
        if loop.guard.change("writer").state not in (State.CANARY, State.SWITCHED):
            break
    loop.guard.drain()
    reported += [r] if (r := loop.check_and_rollback("writer")) else []
    change = loop.guard.change("writer")
    assert change.state == State.ROLLED_BACK, change.reason
    assert change.verdict.metric == "success_rate"
    assert len(reported) == 1 and reported[0]["before_metrics"]["total_tasks"] >= QUICK.min_calls
    assert adapter.configs["writer"] == {"prompt": "good"}


# -- stats and history ----------------------------------------------------------------------
def test_get_improvement_stats(make, storage):
    adapter = Adapter({"writer": {"prompt": "good"}})
    loop = make(storage=storage, strategy=PatchOnce({"prompt": "bad"}), config_adapter=adapter)
    every_failure(loop)
    empty = loop.get_improvement_stats("writer")
    assert set(empty) == AGENT_STATS_KEYS
    assert empty["agent_id"] == "writer" and empty["total_tasks"] == 0 and empty["last_improvement"] is None
    assert empty["rollback_count"] == 0 and empty["rollback_history"] == []

    patched_then_failing(loop)
    mine = loop.get_improvement_stats("writer")
    assert set(mine) == AGENT_STATS_KEYS
    assert mine["total_tasks"] == 3 + 1 + 8
    assert isinstance(mine["last_improvement"], str)
    assert mine["rollback_count"] == 1 and len(mine["rollback_history"]) == 1

    overall = loop.get_improvement_stats()
    assert set(overall) == GLOBAL_STATS_KEYS
    assert overall["total_improvements"] == 1
    assert overall["agents_improved"] == ["writer"]  # the seed's type: a list of agent ids
    assert overall["total_rollbacks"] == 1 and overall["agents_rolled_back"] == 1


def test_rollback_history_entries_carry_reason_and_timestamp(make):
    adapter = Adapter({"writer": {"prompt": "good"}})
    loop = make(strategy=PatchOnce({"prompt": "bad"}), config_adapter=adapter)
    every_failure(loop)
    assert loop.auto_rollback.get_rollback_history("writer") == []
    reported = patched_then_failing(loop)
    history = loop.auto_rollback.get_rollback_history("writer")
    assert len(history) == 1
    entry = history[0]
    assert set(entry) >= HISTORY_KEYS
    assert entry["agent_id"] == "writer" and entry["reason"] == reported[0]["reason"]
    assert isinstance(entry["timestamp"], str) and entry["timestamp"]
    assert entry["config_restored"] == {"prompt": "good"} and entry["backup_id"] == reported[0]["backup_id"]
    assert loop.auto_rollback.get_rollback_history("other") == []
    assert loop.auto_rollback.get_rollback_history() == history
    assert loop.auto_rollback.get_stats() == {"total_rollbacks": 1, "agents_rolled_back": 1, "agents": ["writer"]}


def test_adaptive_threshold_overrides_persist_in_the_data_dir(make, tmp_path):
    loop = make()
    loop.adaptive_threshold.set_manual_threshold("writer", failure_threshold=4, analysis_window_hours=6,
                                                 cooldown_hours=2)
    assert loop.adaptive_threshold.get_threshold("writer", []) == (4, 6, 2)
    again = make(loop.data_dir)
    assert again.adaptive_threshold.get_threshold("writer", []) == (4, 6, 2)
    profile = again.adaptive_threshold.get_agent_profile("writer", [])
    assert profile["source"] == "manual" and profile["failure_threshold"] == 4


def test_the_threshold_decides_when_failures_trigger(make):
    adapter = Adapter({"writer": {"prompt": "good"}})
    loop = make(strategy=PatchOnce({"prompt": "bad"}), config_adapter=adapter)
    loop.adaptive_threshold.set_manual_threshold("writer", failure_threshold=3, min_failure_rate=0.0)
    assert [loop.execute_with_improvement("writer", "task", fail)["improvement_applied"] for _ in range(3)] == [0, 0, 1]


def test_jsonl_trace_store_has_compact(make, tmp_path):
    if JSONL_ABSTRACT:
        pytest.skip("JsonlStore is being extended and is abstract for now")
    loop = make(storage="jsonl")
    for _ in range(5):
        loop.execute_with_improvement("a", "task", ok)
    for _ in range(3):
        loop.execute_with_improvement("b", "task", ok)
    assert callable(loop.trace_store.compact)
    assert loop.trace_store.compact(2) == 3 + 1  # the newest 2 per agent are kept
    assert loop.guard.stats("a").n == 5  # statistics are aggregates: unchanged


# -- legacy strategy hooks ------------------------------------------------------------------
def test_legacy_strategy_hooks_apply_and_restore_without_an_adapter(make):
    strategy = LegacyStrategy()
    loop = make(strategy=strategy)
    every_failure(loop)
    reported = patched_then_failing(loop)
    assert strategy.events[:2] == ["current_config", "apply"] and "rollback" in strategy.events
    assert len(reported) == 1
    assert reported[0]["success"] is True and reported[0]["restore_source"] == "improvement_strategy"
    assert strategy.config == {"prompt": "good"}


# -- async ----------------------------------------------------------------------------------
def test_aexecute_awaits_an_async_execute_fn(make):
    loop = make()

    async def agent():
        await asyncio.sleep(0)
        return "done"

    async def broken():
        await asyncio.sleep(0)
        raise RuntimeError("async boom")

    async def main():
        return [await loop.aexecute_with_improvement("writer", "task", agent),
                await loop.atrack("writer", "task", broken),
                await loop.aexecute_with_improvement("writer", "task", ok)]  # a sync fn works too

    good, bad, sync = asyncio.run(main())
    assert set(good) == RESULT_KEYS and good["success"] is True and good["result"] == "done"
    assert bad["success"] is False and bad["error"] == "async boom" and bad["result"] is None
    assert sync["success"] is True and sync["result"] == "ok"
    stats = loop.guard.stats("writer")
    assert (stats.successes, stats.failures) == (2, 1)


def test_sync_execute_refuses_a_coroutine_function(make):
    loop = make()

    async def agent():
        return "done"

    with pytest.raises(TypeError):
        loop.execute_with_improvement("writer", "task", agent)
    with pytest.raises(TypeError):
        loop.track("writer", "task", agent)
    assert loop.guard.stats("writer").n == 0


def test_a_plain_function_returning_a_coroutine_is_a_failure(make, recwarn):
    loop = make()
    ran = []

    async def body():
        ran.append(1)
        return "done"

    r = loop.execute_with_improvement("writer", "task", lambda: body())
    assert r["success"] is False and r["result"] is None and "awaitable" in r["error"]
    assert ran == []
    stats = loop.guard.stats("writer")
    assert (stats.successes, stats.failures) == (0, 1)
    gc.collect()
    assert not [w for w in recwarn if "never awaited" in str(w.message)]  # it was closed, not leaked
