"""The Guard's three forms, outcome classification, feedback and durability."""

from __future__ import annotations

import asyncio

import pytest

from sil_core import ConfigError, Guard, Outcome, register_control_flow


@pytest.fixture
def guard():
    g = Guard("memory://")
    yield g
    g.close()


def only(guard, target):
    guard.flush()
    rows = guard.store.read_calls(target)
    assert len(rows) == 1, rows
    return rows[0]


def test_sync_decorator_returns_result_and_records(guard):
    @guard.track("t")
    def add(a, b=1):
        """Adds."""
        return a + b

    assert add(1, b=2) == 3
    assert add.__name__ == "add" and add.__doc__ == "Adds." and add.__wrapped__ is not None
    assert add.guard is guard and add.target == "t"
    r = only(guard, "t")
    assert r.outcome == Outcome.OK and r.duration_s >= 0 and r.id


def test_bare_decorator_names_the_target_after_the_function(guard):
    @guard.track
    def plain():
        return "x"

    assert plain() == "x"
    assert guard.stats("test_bare_decorator_names_the_target_after_the_function.<locals>.plain").n == 1


def test_exception_is_reraised_unchanged_and_recorded(guard):
    err = ValueError("bad input")

    @guard.track("t")
    def boom():
        raise err

    with pytest.raises(ValueError) as info:
        boom()
    assert info.value is err
    r = only(guard, "t")
    assert (r.outcome, r.error_type, r.error_message) == ("error", "ValueError", "bad input")


def test_success_predicate_marks_wrong_results_as_failures(guard):
    @guard.track("t", success=lambda r: r.get("status") == "ok")
    def agent(status):
        return {"status": status}

    assert agent("ok") == {"status": "ok"}
    assert agent("error") == {"status": "error"}  # the result is still returned
    s = guard.stats("t")
    assert (s.successes, s.failures) == (1, 1)
    assert guard.store.read_calls("t")[-1].error_type == "PredicateFailed"


def test_a_raising_predicate_is_a_failure_not_an_exception(guard):
    @guard.track("t", success=lambda r: r["missing"])
    def agent():
        return {}

    assert agent() == {}
    assert only(guard, "t").error_type == "PredicateError"


async def test_async_decorator(guard):
    @guard.track("a", success=bool)
    async def work(x):
        await asyncio.sleep(0)
        if x < 0:
            raise KeyError(x)
        return x

    assert await work(1) == 1
    assert await work(0) == 0  # falsy -> predicate failure
    with pytest.raises(KeyError):
        await work(-1)
    assert asyncio.iscoroutinefunction(work)
    s = guard.stats("a")
    assert (s.n, s.successes, s.failures) == (3, 1, 2)


async def test_cancellation_is_recorded_as_cancelled_and_reraised(guard):
    started = asyncio.Event()

    @guard.track("slow")
    async def slow():
        started.set()
        await asyncio.sleep(10)

    task = asyncio.create_task(slow())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    r = only(guard, "slow")
    assert r.outcome == Outcome.CANCELLED and r.success is None
    assert guard.stats("slow").failures == 0


def test_keyboard_interrupt_and_system_exit_are_cancelled(guard):
    @guard.track("k")
    def interrupted(exc):
        raise exc

    for exc in (KeyboardInterrupt(), SystemExit(3)):
        with pytest.raises(type(exc)):
            interrupted(exc)
    s = guard.stats("k")
    assert (s.n, s.cancelled, s.failures) == (2, 2, 0)


def test_registered_control_flow_is_interrupted(guard):
    class Pause(Exception):
        pass

    register_control_flow(Pause)

    @guard.track("p")
    def pause():
        raise Pause()

    with pytest.raises(Pause):
        pause()
    assert only(guard, "p").outcome == Outcome.INTERRUPTED
    with pytest.raises(ValueError):
        register_control_flow(Pause, "ok")


def test_context_manager(guard):
    with guard.call("c", context={"user": "u1"}) as call:
        call.score = 0.7
    with pytest.raises(RuntimeError):
        with guard.call("c") as failing:
            raise RuntimeError("x")
    with guard.call("c") as marked:
        marked.success = False
    with guard.call("c") as replayed:
        replayed.latency_s = 2.5
    guard.flush()
    rows = {r.id: r for r in guard.store.read_calls("c")}
    assert rows[call.call_id].score == 0.7 and rows[call.call_id].context_value() == {"user": "u1"}
    assert rows[failing.call_id].outcome == "error" and rows[failing.call_id].error_type == "RuntimeError"
    assert rows[marked.call_id].error_type == "MarkedFailed"
    assert rows[replayed.call_id].duration_s == 2.5
    assert call.version is None and call.arm is None and call.config is None


async def test_async_context_manager(guard):
    async with guard.call("ac") as call:
        await asyncio.sleep(0)
    with pytest.raises(ZeroDivisionError):
        async with guard.call("ac"):
            1 / 0
    s = guard.stats("ac")
    assert (s.successes, s.failures) == (1, 1)
    assert guard.store.get_call(call.call_id) is not None


def test_generators_are_recorded_when_iteration_ends(guard):
    @guard.track("gen")
    def numbers(n):
        yield from range(n)
        return "done"

    assert list(numbers(3)) == [0, 1, 2]
    g = numbers(5)
    next(g)
    g.close()  # the consumer stopped early: control flow, not failure
    s = guard.stats("gen")
    assert (s.n, s.successes, s.cancelled) == (2, 1, 1)


async def test_async_generators(guard):
    @guard.track("agen")
    async def stream():
        yield 1
        raise ValueError("mid-stream")

    items = []
    with pytest.raises(ValueError):
        async for item in stream():
            items.append(item)
    assert items == [1]
    assert only(guard, "agen").outcome == "error"


def test_record_and_feedback(guard):
    cid = guard.record("r", success=True, latency_s=0.4, version="v2", arm="candidate",
                       context={"k": 1}, score=0.9, ts=1_800_000_000.0)
    guard.record("r", success=False, latency_s=0.1, error_type="Timeout")
    assert guard.stats("r").successes == 1
    guard.feedback(cid, success=False)
    s = guard.stats("r")
    assert (s.successes, s.failures) == (0, 2)
    r = guard.store.get_call(cid)
    assert r.version == "v2" and r.arm == "candidate" and r.feedback_success is False
    assert guard.stats("r", version="v2").failures == 1
    with pytest.raises(ConfigError):
        guard.feedback(cid)
    with pytest.raises(ConfigError):
        guard.record("r", success=True, latency_s=1, outcome="weird")


def test_feedback_on_a_call_not_yet_flushed(guard):
    with guard.call("f") as call:
        pass
    guard.feedback(call.call_id, success=False, score=0.0)
    s = guard.stats("f")
    assert (s.successes, s.failures, s.score_mean) == (0, 1, 0.0)


def test_stats_since(guard):
    import time
    from datetime import datetime, timedelta, timezone

    guard.record("w", success=False, latency_s=1, ts=time.time() - 3 * 86400)
    guard.record("w", success=True, latency_s=1)
    assert guard.stats("w").n == 2
    assert guard.stats("w", since=timedelta(hours=2)).n == 1
    assert guard.stats("w", since=datetime.now(timezone.utc) - timedelta(days=4)).n == 2
    assert guard.stats("w", since=datetime.utcnow() - timedelta(hours=2)).n == 1  # naive = UTC


def test_sync_durability_commits_before_returning(tmp_path):
    url = f"sqlite:///{tmp_path / 's.db'}"
    g = Guard(url, durability="sync", flush_interval=60)
    try:
        @g.track("d")
        def f():
            return 1

        f()
        with g.call("d"):
            pass
        # no flush: a second handle on the same file sees both records already
        from sil_core import open_store

        other = open_store(url)
        assert other.count_calls("d") == 2
        other.close()
    finally:
        g.close()


async def test_sync_durability_async_path(tmp_path):
    url = f"sqlite:///{tmp_path / 's.db'}"
    g = Guard(url, durability="sync", flush_interval=60)

    @g.track("d")
    async def f():
        return 1

    await asyncio.gather(*(f() for _ in range(20)))
    assert g.store.count_calls("d") == 20
    g.close()


def test_bad_durability():
    with pytest.raises(ConfigError):
        Guard("memory://", durability="eventually")


def test_thread_safety_many_threads(guard):
    import threading

    @guard.track("mt")
    def f(i):
        if i % 10 == 0:
            raise ValueError
        return i

    def worker():
        for i in range(500):
            try:
                f(i)
            except ValueError:
                pass

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    s = guard.stats("mt")
    assert (s.n, s.failures) == (4000, 400)


def test_close_flushes_and_guard_is_a_context_manager(tmp_path):
    url = f"sqlite:///{tmp_path / 'c.db'}"
    with Guard(url, flush_interval=60) as g:
        g.record("x", success=True, latency_s=0.1)
    from sil_core import open_store

    with open_store(url) as s:
        assert s.count_calls("x") == 1


def test_the_config_before_a_targets_first_change_is_its_adapters():
    """``current_call().config`` and ``guard.call(...).config`` agree with the adapter (as
    ``node_config()`` does) before the first change, and follow it when it changes."""
    from sil_core import DictConfigAdapter, current_call

    adapter = DictConfigAdapter({"writer": {"prompt": "v1"}})
    with Guard("memory://", adapter=adapter) as g:
        seen = []

        @g.track("writer")
        def write():
            info = current_call()
            seen.append((info.target, info.version, info.arm, info.config))

        write()
        with g.call("writer") as call:
            assert (call.version, call.arm, call.config) == (None, None, {"prompt": "v1"})
        adapter.configs["writer"] = {"prompt": "v1.1"}  # edited behind the guard: read when asked
        write()
        assert seen == [("writer", None, None, {"prompt": "v1"}), ("writer", None, None, {"prompt": "v1.1"})]
    with Guard("memory://") as g:  # no adapter: the call is still known, without a config
        with g.call("plain") as call:
            assert current_call().target == "plain" and call.config is None and current_call().config is None
        assert current_call() is None


async def test_a_tracked_call_gives_its_call_id_inside_and_to_its_caller():
    from sil_core import current_call, last_call

    with Guard("memory://") as g:
        inside = []

        @g.track("sync-agent")
        def answer(q):
            inside.append(current_call().call_id)
            return q

        @g.track("async-agent")
        async def aanswer(q):
            inside.append(current_call().call_id)
            return q

        answer("a")
        first = last_call().call_id
        await aanswer("b")
        second = last_call().call_id
        assert [first, second] == inside and first != second
        g.feedback(first, success=False)
        g.feedback(second, score=0.2)
        g.flush()
        assert g.store.get_call(first).success is False and g.store.get_call(second).effective_score == 0.2

        answer("c")  # an id nobody asked for inside is made when the caller asks for it
        third = last_call().call_id
        g.flush()
        assert g.store.read_calls("sync-agent")[-1].id == third
        with g.call("block") as call:
            assert current_call().call_id == call.call_id
        assert last_call().call_id == call.call_id
