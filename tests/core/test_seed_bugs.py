"""The seed's lifecycle, concurrency and integration bugs (``docs/migrating-from-0.1.md``, "Defects fixed"), each
as one scenario run against both implementations: ``self_improving_loop.SelfImprovingLoop``
0.1.3 (the seed, installed in the venv) and ``sil_core.SelfImprovingLoop``.

Every test asserts the bug on the seed, so the scenario really reproduces it, and its
absence on ours. The seed triggers an improvement on failures through its
``AdaptiveThreshold``; ``set_manual_threshold`` makes it trigger on every failure (ours
also needs ``min_failure_rate=0``, since it asks for a failure rate as well as a count).
"""

from __future__ import annotations

import asyncio
import copy
import gc
import inspect
import json
import threading
import time

import pytest
import self_improving_loop

import sil_core
from sil_core import DictConfigAdapter, JsonFileConfigAdapter, RolloutPolicy, State

IMPLS = ("seed", "ours")
#: ours: judge on a few dozen calls, settle an undecided change after 100 (the defaults
#: want 30 calls per arm and settle after 1000, too slow for a unit test)
QUICK = RolloutPolicy(min_calls=20, step_calls=20, horizon=100)


@pytest.fixture(params=IMPLS)
def impl(request) -> str:
    return request.param


@pytest.fixture
def make(impl, tmp_path):
    """``make(data_dir=None, policy=None, **kwargs)``: a loop of the implementation under
    test on SQLite storage in ``tmp_path`` (the seed writes into ``data_dir``)."""
    loops = []

    def factory(data_dir=None, *, policy=None, **kwargs):
        data_dir = str(data_dir or tmp_path / "data")
        if impl == "seed":
            loop = self_improving_loop.SelfImprovingLoop(data_dir=data_dir, storage="sqlite", **kwargs)
        else:
            loop = sil_core.SelfImprovingLoop(data_dir=data_dir, storage="sqlite", policy=policy, **kwargs)
        loops.append(loop)
        return loop

    yield factory
    for loop in loops:
        if impl == "ours":
            loop.close()


def trigger_on_every_failure(loop, impl: str, agent_id: str, *, cooldown_hours: float) -> None:
    extra = {} if impl == "seed" else {"min_failure_rate": 0.0}
    loop.adaptive_threshold.set_manual_threshold(agent_id, failure_threshold=1, cooldown_hours=cooldown_hours, **extra)


class Adapter(DictConfigAdapter):
    """Configs in memory; records every apply and restore; restores can be made to fail."""

    def __init__(self, configs: dict, *, fail_restore: bool = False) -> None:
        super().__init__(configs)
        self.fail_restore = fail_restore
        self.applies: list[dict] = []
        self.restores: list[dict] = []
        self._count = threading.Lock()

    def apply_config(self, agent_id, config_patch):
        with self._count:
            self.applies.append(copy.deepcopy(config_patch))
        return super().apply_config(agent_id=agent_id, config_patch=config_patch)

    def rollback_config(self, agent_id, backup_config):
        self.restores.append(copy.deepcopy(backup_config))
        if self.fail_restore:
            raise OSError("config service unavailable")
        super().rollback_config(agent_id=agent_id, backup_config=backup_config)


class PatchStrategy:
    """Proposes ``patch`` on every analysis (or only the first ``times``)."""

    def __init__(self, patch: dict, *, times: int | None = None) -> None:
        self.patch = patch
        self.times = times
        self.calls = 0

    def analyze(self, agent_id, traces, before_metrics=None):
        self.calls += 1
        if self.times is not None and self.calls > self.times:
            return None
        return dict(self.patch)


class Collect:
    """A notifier (the seed's interface) that records, or raises if ``broken``."""

    def __init__(self, *, broken: bool = False) -> None:
        self.broken = broken
        self.improvements: list[tuple] = []
        self.rollbacks: list[tuple] = []

    def notify_improvement(self, agent_id, improvements_applied, details=None):
        self.improvements.append((agent_id, improvements_applied))
        if self.broken:
            raise RuntimeError("telegram is down")

    def notify_rollback(self, agent_id, reason, metrics=None):
        self.rollbacks.append((agent_id, reason))
        if self.broken:
            raise RuntimeError("telegram is down")


def ok():
    return "ok"


def steady():
    time.sleep(0.002)  # a call of realistic, steady latency (microsecond calls are all jitter)
    return "ok"


def fail():
    raise RuntimeError("provider returned 503")


def slow_fail():
    time.sleep(0.05)
    raise RuntimeError("provider timed out")


def run(loop, agent_id: str, fn, **kwargs) -> dict:
    return loop.execute_with_improvement(agent_id, "task", fn, **kwargs)


def settle(loop, impl: str, agent_id: str) -> list[dict]:
    """Ours: let background judging finish, then collect a rollback it made (which the
    compat layer reports once, on the next check)."""
    if impl == "seed":
        return []
    loop.guard.drain()
    r = loop.check_and_rollback(agent_id)
    return [r] if r else []


def test_b2_an_old_confirmed_patch_is_not_rolled_back_by_a_later_outage(impl, make):
    """B2: the seed never confirms a patch, so an unrelated outage long after it (here 5
    failures after 120 good calls) rolls it back; ours promotes it, and an outage later is
    not the change's fault."""
    adapter = Adapter({"writer": {"temperature": 0.2}})
    notifier = Collect()
    loop = make(strategy=PatchStrategy({"temperature": 0.3}, times=1), config_adapter=adapter, notifier=notifier,
                policy=QUICK)
    trigger_on_every_failure(loop, impl, "writer", cooldown_hours=24)
    for _ in range(40):
        run(loop, "writer", steady)
    # a slow failure: the seed's before-window mean latency (failures included) then sits
    # well above the 2 ms calls that follow, so its latency rule cannot fire on jitter
    r = run(loop, "writer", slow_fail)
    assert r["improvement_triggered"] and r["improvement_applied"] == 1
    assert adapter.configs["writer"] == {"temperature": 0.3}

    rollbacks = []
    for _ in range(120):  # weeks of good service
        rollbacks += [r["rollback_executed"]] if (r := run(loop, "writer", steady))["rollback_executed"] else []
    rollbacks += settle(loop, impl, "writer")
    assert rollbacks == []
    if impl == "ours":
        assert loop.guard.change("writer").state == State.PROMOTED

    for _ in range(8):  # then the provider has an outage
        rollbacks += [r["rollback_executed"]] if (r := run(loop, "writer", fail))["rollback_executed"] else []
    rollbacks += settle(loop, impl, "writer")

    if impl == "seed":  # the three-week-old patch is rolled back for the outage
        assert len(rollbacks) == 1 and rollbacks[0]["success"] is True
        assert "连续失败" in rollbacks[0]["reason"]
        assert adapter.configs["writer"] == {"temperature": 0.2}
        assert adapter.restores == [{"temperature": 0.2}]
    else:
        assert rollbacks == [] and adapter.restores == []
        assert adapter.configs["writer"] == {"temperature": 0.3}
        assert loop.guard.change("writer").state == State.PROMOTED
        assert "rollback_started" not in [e["type"] for e in loop.guard.trail("writer")]
        assert loop.auto_rollback.get_rollback_history("writer") == []


def test_b3_a_new_patch_never_stacks_on_a_pending_one(impl, make, tmp_path):
    """B3: with no cooldown the seed applies a new patch on every failure while the first
    is pending, overwriting its backup with the already-patched config (and, as the
    verification window restarts each time, never rolls back). Ours keeps one change in
    flight, and its rollback restores the true baseline."""
    baseline = {"prompt": "good", "temperature": 0.2}
    adapter = Adapter({"writer": dict(baseline)})
    strategy = PatchStrategy({"prompt": "bad"})
    loop = make(strategy=strategy, config_adapter=adapter, notifier=Collect())
    trigger_on_every_failure(loop, impl, "writer", cooldown_hours=0)

    results = [run(loop, "writer", fail) for _ in range(12)]
    rollbacks = [r["rollback_executed"] for r in results if r["rollback_executed"]] + settle(loop, impl, "writer")

    if impl == "seed":
        assert len(adapter.applies) == 12 and sum(r["improvement_applied"] for r in results) == 12
        assert list(loop.state["backups"]) == ["writer"]  # one pending backup slot, overwritten each time
        backups = [json.loads(line) for line in (tmp_path / "data" / "config_backups.jsonl").read_text().splitlines()]
        assert [b["config"] for b in backups] == [baseline] + [{"prompt": "bad", "temperature": 0.2}] * 11
        assert rollbacks == [] and adapter.configs["writer"]["prompt"] == "bad"  # the bad patch stays
    else:
        assert adapter.applies == [{"prompt": "bad"}]  # never a second change in flight
        assert sum(r["improvement_applied"] for r in results) == 1
        assert len(rollbacks) == 1 and rollbacks[0]["success"] is True
        assert adapter.restores == [baseline] and adapter.configs["writer"] == baseline  # the true baseline
        changes = [v for _, v, _ in loop.trace_store.kv_list("change")]
        assert [c["state"] for c in changes].count(State.ROLLED_BACK) == 1
        assert all(c["state"] == State.REJECTED for c in changes if c["state"] != State.ROLLED_BACK)


def test_b4_a_failed_restore_is_reported_once_and_never_as_a_rollback(impl, make):
    """B4: the seed writes its rollback history before it tries the restore, so a restore
    that raises is recorded as a rollback, and recorded and alerted again on every later
    call. Ours records ``restore_failed`` once and has no rollback until one succeeds."""
    adapter = Adapter({"writer": {"prompt": "good"}}, fail_restore=True)
    notifier = Collect()
    loop = make(strategy=PatchStrategy({"prompt": "bad"}, times=1), config_adapter=adapter, notifier=notifier)
    trigger_on_every_failure(loop, impl, "writer", cooldown_hours=24)
    for _ in range(5):
        run(loop, "writer", ok)
    assert run(loop, "writer", fail)["improvement_applied"] == 1
    results = [run(loop, "writer", fail) for _ in range(14)]  # the patch is bad
    reported = [r["rollback_executed"] for r in results if r["rollback_executed"]] + settle(loop, impl, "writer")

    assert reported and all(r["success"] is False and r["restore_applied"] is False for r in reported)
    assert all("config service unavailable" in r["error"] for r in reported)
    assert adapter.configs["writer"] == {"prompt": "bad"}  # nothing was restored
    history = loop.auto_rollback.get_rollback_history("writer")
    if impl == "seed":  # a "rollback" recorded and alerted on every call since the first attempt
        assert len(reported) == 5 and len(history) == 5 and len(notifier.rollbacks) == 5
        assert len(adapter.restores) == 5
    else:
        assert len(reported) == 1 and len(notifier.rollbacks) == 1
        assert history == []
        assert loop.guard.change("writer").state == State.RESTORE_FAILED
        events = [e["type"] for e in loop.guard.trail("writer")]
        assert events.count("restore_failed") == 1 and "rollback_succeeded" not in events
        # once the config service is back, the restore succeeds, and only now is there a rollback
        adapter.fail_restore = False
        loop.guard.rollback("writer")  # the retry (the background would retry after its backoff)
        assert loop.guard.change("writer").state == State.ROLLED_BACK
        assert adapter.configs["writer"] == {"prompt": "good"}
        done = loop.check_and_rollback("writer")
        assert done["success"] is True and done["restore_applied"] is True
        assert loop.check_and_rollback("writer") is None  # reported once
        history = loop.auto_rollback.get_rollback_history("writer")
        assert len(history) == 1 and history[0]["reason"] and history[0]["timestamp"]


def test_c1_two_instances_on_one_data_dir_share_the_change_in_flight(impl, make, tmp_path):
    """C1: the seed keeps its state per instance and writes it whole, so a second instance
    (another worker) wipes the first's pending backup and patches over it. Ours keeps the
    change in the shared store: both instances see it, the second refuses to stack a
    proposal on it, and the second can roll it back."""
    configs = tmp_path / "configs"
    configs.mkdir()
    (configs / "a.json").write_bytes(b'{"prompt":  "good"}\n')
    (configs / "b.json").write_bytes(b'{"prompt": "fine"}\n')
    data = tmp_path / "data"

    first = make(data, strategy=PatchStrategy({"prompt": "bad"}), notifier=Collect(),
                 config_adapter=JsonFileConfigAdapter(configs, per_target=True))
    for agent in ("a", "b"):
        trigger_on_every_failure(first, impl, agent, cooldown_hours=24)
    second = make(data, strategy=PatchStrategy({"prompt": "bad"}), notifier=Collect(),
                  config_adapter=JsonFileConfigAdapter(configs, per_target=True))

    assert run(first, "a", fail)["improvement_applied"] == 1  # worker 1 patches agent a
    assert run(second, "b", fail)["improvement_applied"] == 1  # worker 2 patches agent b
    assert json.loads((configs / "a.json").read_text()) == {"prompt": "bad"}

    if impl == "seed":
        state = json.loads((data / "loop_state.json").read_text())
        assert list(state["backups"]) == ["b"]  # worker 1's pending backup of agent a is gone
        assert "a" not in second.state.get("backups", {})
        restarted = make(data)
        assert "a" not in restarted.state.get("backups", {})  # nobody can roll agent a back now
        # and worker 2, not knowing of worker 1's patch, stacks another one on agent a
        assert run(second, "a", fail)["improvement_applied"] == 1
        assert second.state["backups"]["a"]["backup_id"].startswith("a_")
    else:
        change = first.guard.change("a")
        assert change.state in (State.CANARY, State.SWITCHED)
        assert second.guard.change("a").id == change.id  # the second worker sees it
        assert make(data).guard.change("a").id == change.id  # so does a restarted one
        # the second worker does not stack a proposal on it
        assert run(second, "a", fail)["improvement_applied"] == 0
        refused = second.guard.propose("a", {"prompt": "worse"}, mode="switch")
        assert refused.state == State.REJECTED and "in flight" in refused.reason
        # and its checks can roll the first worker's change back
        rollbacks = [r["rollback_executed"] for r in (run(second, "a", fail) for _ in range(6))
                     if r["rollback_executed"]] + settle(second, impl, "a")
        assert len(rollbacks) == 1 and rollbacks[0]["success"] is True
        assert rollbacks[0]["backup_id"] == change.id
        assert first.guard.change("a").state == State.ROLLED_BACK
        assert (configs / "a.json").read_bytes() == b'{"prompt":  "good"}\n'  # byte for byte
        assert json.loads((configs / "b.json").read_text()) == {"prompt": "bad"}  # b's change untouched


def test_c2_concurrent_failures_apply_one_patch(impl, make):
    """C2: 8 threads failing at once, threshold 1, 1-hour cooldown: the seed's
    check-then-act on the cooldown lets all 8 apply the patch; ours applies it once."""
    adapter = Adapter({"writer": {"prompt": "good"}})
    together = threading.Barrier(8)

    class SlowStrategy(PatchStrategy):
        def analyze(self, agent_id, traces, before_metrics=None):
            try:  # the strategy takes a moment: concurrent analyses overlap
                together.wait(timeout=1.0)
            except threading.BrokenBarrierError:
                pass
            return super().analyze(agent_id, traces, before_metrics)

    strategy = SlowStrategy({"prompt": "v2"})
    loop = make(strategy=strategy, config_adapter=adapter, notifier=Collect())
    trigger_on_every_failure(loop, impl, "writer", cooldown_hours=1)
    start = threading.Barrier(8)
    results, errors = [], []

    def worker():
        try:
            start.wait(timeout=5)
            results.append(run(loop, "writer", fail))
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert not errors and len(results) == 8
    assert all(r["success"] is False for r in results)
    applied = sum(r["improvement_applied"] for r in results)
    if impl == "seed":
        assert len(adapter.applies) == 8 and strategy.calls == 8
        assert applied == 8 and len(loop.notifier.improvements) == 8
    else:
        assert len(adapter.applies) == 1 and strategy.calls == 1
        # the results and alerts tell the caller what happened: one patch, announced once
        assert applied == 1 and loop.notifier.improvements == [("writer", 1)]
        assert sum(r["improvement_triggered"] for r in results) == 1
        assert len([v for _, v, _ in loop.trace_store.kv_list("change") if v["state"] != State.REJECTED]) == 1


def test_d1_an_async_execute_fn_is_awaited_never_counted_unawaited(impl, make, recwarn):
    """D1: the seed calls an async ``execute_fn``, gets a coroutine, never awaits it and
    records a success (even when the coroutine would raise). Ours refuses it in the sync
    API and awaits it in ``aexecute_with_improvement``, recording the real outcome."""
    ran = []

    async def agent():
        ran.append("agent")
        return "done"

    async def broken():
        ran.append("broken")
        raise RuntimeError("async boom")

    loop = make(notifier=Collect())
    if impl == "seed":
        assert not hasattr(loop, "aexecute_with_improvement")
        with pytest.warns(RuntimeWarning, match="never awaited"):
            results = [run(loop, "writer", agent), run(loop, "writer", broken)]
            assert all(r["success"] is True and r["error"] is None for r in results)
            assert all(inspect.iscoroutine(r["result"]) for r in results)
            del results
            gc.collect()
        assert ran == []  # neither body ever ran
        traces = loop.trace_store.load("writer")
        assert [t["success"] for t in traces] == [True, True]
    else:
        with pytest.raises(TypeError, match="aexecute_with_improvement"):
            run(loop, "writer", agent)
        good = asyncio.run(loop.aexecute_with_improvement("writer", "task", agent))
        bad = asyncio.run(loop.aexecute_with_improvement("writer", "task", broken))
        assert good["success"] is True and good["result"] == "done" and good["error"] is None
        assert bad["success"] is False and bad["result"] is None and bad["error"] == "async boom"
        assert ran == ["agent", "broken"]
        stats = loop.guard.stats("writer")
        assert (stats.n, stats.successes, stats.failures) == (2, 1, 1)
        gc.collect()
        assert not [w for w in recwarn if "never awaited" in str(w.message)]


def test_d3_bookkeeping_errors_never_reach_the_caller(impl, make):
    """D3: the seed raises its own bookkeeping errors (a notifier that raises, a context
    JSON cannot encode) to the caller after the agent already ran, losing its result.
    Ours returns the result dict with the agent's result."""
    adapter = Adapter({"writer": {"prompt": "good"}})
    notifier = Collect(broken=True)
    loop = make(strategy=PatchStrategy({"prompt": "bad"}, times=1), config_adapter=adapter, notifier=notifier)
    trigger_on_every_failure(loop, impl, "writer", cooldown_hours=24)
    sent = []

    def agent():
        sent.append("email")
        return "sent"

    # a context JSON cannot encode
    context = {"client": object()}
    if impl == "seed":
        with pytest.raises(TypeError, match="not JSON serializable"):
            run(loop, "writer", agent, context=context)
    else:
        r = run(loop, "writer", agent, context=context)
        assert r["success"] is True and r["result"] == "sent"
    assert sent == ["email"]  # the agent ran either way

    # a notifier that raises when a patch is applied
    if impl == "seed":
        with pytest.raises(RuntimeError, match="telegram is down"):
            run(loop, "writer", fail)
    else:
        r = run(loop, "writer", fail)
        assert r["success"] is False and r["improvement_applied"] == 1
    assert notifier.improvements == [("writer", 1)] and adapter.configs["writer"] == {"prompt": "bad"}

    # a notifier that raises when the bad patch is rolled back
    raised, results = [], []
    for _ in range(12):
        try:
            results.append(run(loop, "writer", fail))
        except RuntimeError as exc:
            raised.append(exc)
    results_rolled = [r["rollback_executed"] for r in results if r["rollback_executed"]] + settle(loop, impl, "writer")
    assert notifier.rollbacks  # the alert was attempted
    assert adapter.configs["writer"] == {"prompt": "good"}  # and the restore itself worked
    if impl == "seed":
        assert raised and str(raised[0]) == "telegram is down"
        assert len(results) + len(raised) == 12
    else:
        assert raised == [] and len(results) == 12
        assert all(r["error"] == "provider returned 503" for r in results)
        assert len(results_rolled) == 1 and results_rolled[0]["success"] is True
