"""The state-row and trail contract: ``kv_get``/``kv_put``/``kv_list`` (compare-and-set on a
per-row ``rev``) and ``trail_append``/``trail_read``, on every backend."""

from __future__ import annotations

import multiprocessing
import threading
import time
import traceback

import pytest

from sil_core.store import open_store
from sil_core.trail import GENESIS, append_event, event_hash, verify_trail

SPAWN = multiprocessing.get_context("spawn")


# -- kv: compare-and-set -----------------------------------------------------------------------
def test_create_with_rev_zero_wins_once(url, store):
    assert store.kv_get("change", "c1") is None
    assert store.kv_put("change", "c1", {"state": "proposed"}, expect_rev=0) == 1
    assert store.kv_put("change", "c1", {"state": "other"}, expect_rev=0) is None  # second create loses
    assert store.kv_get("change", "c1") == ({"state": "proposed"}, 1)


def test_update_with_the_right_rev_wins_a_stale_one_loses(url, store):
    assert store.kv_put("head", "t", {"v": 1}, expect_rev=0) == 1
    assert store.kv_put("head", "t", {"v": 2}, expect_rev=1) == 2
    assert store.kv_put("head", "t", {"v": 3}, expect_rev=1) is None  # stale
    assert store.kv_put("head", "t", {"v": 3}, expect_rev=5) is None  # from the future
    assert store.kv_get("head", "t") == ({"v": 2}, 2)
    assert store.kv_put("head", "t", {"v": 3}, expect_rev=2) == 3
    assert store.kv_get("head", "t") == ({"v": 3}, 3)
    # a rev other than 0 never creates a row
    assert store.kv_put("head", "missing", {"v": 1}, expect_rev=1) is None
    assert store.kv_get("head", "missing") is None


def test_none_writes_unconditionally(url, store):
    assert store.kv_put("version", "a@v1", {"n": 1}, expect_rev=None) == 1  # creates
    assert store.kv_put("version", "a@v1", {"n": 2}, expect_rev=None) == 2  # overwrites
    assert store.kv_put("version", "a@v1", {"n": 3}, expect_rev=None) == 3
    assert store.kv_get("version", "a@v1") == ({"n": 3}, 3)
    assert store.kv_put("version", "a@v1", {"n": 4}, expect_rev=3) == 4  # rev keeps counting


def test_values_round_trip(url, store):
    value = {
        "text": "ünïcode ✓ 日本語 😀",
        "nested": {"list": [1, 2.5, -3, None, True, False, "x", {"deep": [[], {}]}], "empty": {}},
        "int": 2**53, "float": 0.1, "none": None, "bool": True, "quote": 'a "b" \\ c\n\t',
    }
    assert store.kv_put("change", "ключ ✓", value, expect_rev=0) == 1
    got, rev = store.kv_get("change", "ключ ✓")
    assert got == value and rev == 1
    got["text"] = "mutated"  # the caller's copy, not the store's
    assert store.kv_get("change", "ключ ✓")[0] == value
    assert store.kv_list("change") == [("ключ ✓", value, 1)]


def test_kv_list_is_ordered_by_key_and_namespaces_are_isolated(url, store):
    for key in ("b", "a", "c", "B", "a2"):
        assert store.kv_put("change", key, {"key": key}, expect_rev=0) == 1
    assert store.kv_put("version", "a", {"other": True}, expect_rev=0) == 1  # same key, other kind
    assert store.kv_put("change", "c", {"key": "c", "again": 1}, expect_rev=1) == 2
    assert [(k, r) for k, _, r in store.kv_list("change")] == [("B", 1), ("a", 1), ("a2", 1), ("b", 1), ("c", 2)]
    assert store.kv_list("change")[-1] == ("c", {"key": "c", "again": 1}, 2)
    assert store.kv_list("version") == [("a", {"other": True}, 1)]
    assert store.kv_get("change", "a") == ({"key": "a"}, 1)
    assert store.kv_get("version", "a") == ({"other": True}, 1)
    assert store.kv_list("head") == []


def test_another_handle_sees_the_rows(url, store):
    if url.startswith("memory"):
        pytest.skip("memory:// is one handle")
    store.kv_put("head", "t", {"v": 1}, expect_rev=0)
    append_event(store, "paused", "t")
    with open_store(url) as other:
        assert other.kv_get("head", "t") == ({"v": 1}, 1)
        assert other.kv_put("head", "t", {"v": 2}, expect_rev=1) == 2
        assert [e["seq"] for e in other.trail_read()] == [1]
        append_event(other, "resumed", "t")
    assert store.kv_put("head", "t", {"v": 3}, expect_rev=1) is None
    assert store.kv_get("head", "t") == ({"v": 2}, 2)
    assert [e["type"] for e in store.trail_read()] == ["paused", "resumed"]
    assert verify_trail(store).ok


# -- the trail ----------------------------------------------------------------------------------
def test_append_builds_on_the_previous_event(url, store):
    seen: list = []

    def build(n: int):
        def make(last):
            seen.append(last)
            event = {"seq": last["seq"] + 1 if last else 1, "target": f"t{n % 2}", "n": n,
                     "prev_hash": last["hash"] if last else GENESIS}
            event["hash"] = event_hash(event)
            return event
        return make

    events = [store.trail_append(build(n)) for n in range(5)]
    assert seen[0] is None
    assert seen[1:] == events[:-1]  # each build got the event stored before it
    assert [e["seq"] for e in events] == [1, 2, 3, 4, 5]
    assert store.trail_read() == events
    for before, after in zip(events, events[1:]):
        assert after["prev_hash"] == before["hash"]
    assert store.kv_get("trail", "head") == ({"seq": 5, "hash": events[-1]["hash"]}, 5)


def test_append_event_chains_and_moves_the_head(url, store):
    assert store.trail_read() == [] and store.kv_get("trail", "head") is None
    assert verify_trail(store).ok
    first = append_event(store, "change_proposed", "agent", change_id="c1", note="ünï ✓", n=[1, {"a": None}])
    second = append_event(store, "verdict", "agent", change_id="c1", decision="promote")
    third = append_event(store, "paused", None, actor="ops")
    assert (first["seq"], second["seq"], third["seq"]) == (1, 2, 3)
    assert first["prev_hash"] == GENESIS and second["prev_hash"] == first["hash"] and third["prev_hash"] == second["hash"]
    assert store.trail_read() == [first, second, third]
    assert store.trail_read()[0]["data"] == {"note": "ünï ✓", "n": [1, {"a": None}]}
    head, rev = store.kv_get("trail", "head")
    assert head == {"seq": 3, "hash": third["hash"]} and rev == 3
    assert ("head", {"seq": 3, "hash": third["hash"]}, 3) in store.kv_list("trail")
    report = verify_trail(store)
    assert report.ok, report.problems
    assert (report.events, report.head_seq, report.head_hash) == (3, 3, third["hash"])


def test_trail_read_filters(url, store):
    for i in range(10):
        append_event(store, "verdict", "a" if i % 2 == 0 else "b", i=i)
    append_event(store, "paused", None)
    seqs = lambda events: [e["seq"] for e in events]  # noqa: E731
    assert seqs(store.trail_read()) == list(range(1, 12))
    assert seqs(store.trail_read(target="a")) == [1, 3, 5, 7, 9]
    assert seqs(store.trail_read(target="b")) == [2, 4, 6, 8, 10]
    assert store.trail_read(target="nobody") == []
    assert seqs(store.trail_read(after_seq=8)) == [9, 10, 11]
    assert seqs(store.trail_read(after_seq=11)) == []
    assert seqs(store.trail_read(limit=3)) == [1, 2, 3]
    assert store.trail_read(limit=0) == []
    assert seqs(store.trail_read(target="a", after_seq=3, limit=2)) == [5, 7]
    assert seqs(store.trail_read(target="b", after_seq=4)) == [6, 8, 10]
    assert seqs(store.trail_read(after_seq=5, limit=100)) == list(range(6, 12))


# -- concurrency ------------------------------------------------------------------------------
def test_threads_increment_one_counter_without_losing_any(url, store):
    """8 threads x 25 compare-and-set increments of one row, retrying when they lose."""
    threads_n, per_thread = 8, 25
    errors: list[BaseException] = []
    lost = [0]
    start = threading.Barrier(threads_n)

    def work() -> None:
        own = store if url.startswith("memory") else open_store(url)
        try:
            start.wait(timeout=30)
            for _ in range(per_thread):
                while True:
                    got = own.kv_get("counter", "n")
                    value, rev = got if got is not None else ({"n": 0}, 0)
                    if own.kv_put("counter", "n", {"n": value["n"] + 1}, expect_rev=rev) == rev + 1:
                        break
                    lost[0] += 1
        except BaseException as exc:
            errors.append(exc)
        finally:
            if own is not store:
                own.close()

    threads = [threading.Thread(target=work) for _ in range(threads_n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    assert store.kv_get("counter", "n") == ({"n": threads_n * per_thread}, threads_n * per_thread)


# worker process (module level: spawned children import this module)
def _append_events(queue, barrier, url: str, proc: int, count: int) -> None:
    try:
        store = open_store(url)
        try:
            barrier.wait(timeout=60)
            for i in range(count):
                append_event(store, "verdict", f"t{proc}", proc=proc, i=i)
        finally:
            store.close()
        queue.put(("ok", proc))
    except BaseException:
        queue.put(("error", traceback.format_exc()))


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"], indirect=True)
def test_processes_append_one_unbroken_chain(url, store):
    """4 spawned processes x 25 appends: seq 1..100, one verified chain, nothing lost."""
    procs_n, per_proc = 4, 25
    queue = SPAWN.Queue()
    barrier = SPAWN.Barrier(procs_n)
    procs = [SPAWN.Process(target=_append_events, args=(queue, barrier, url, p, per_proc)) for p in range(procs_n)]
    started = time.monotonic()
    for p in procs:
        p.start()
    results = [queue.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=30)
        if p.is_alive():
            p.kill()
    assert all(status == "ok" for status, _ in results), [v for s, v in results if s != "ok"]
    assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]
    print(f"\n{procs_n * per_proc} trail appends from {procs_n} processes ({url.split(':')[0]}): "
          f"{time.monotonic() - started:.1f} s")
    events = store.trail_read()
    assert [e["seq"] for e in events] == list(range(1, procs_n * per_proc + 1))
    for p in range(procs_n):
        assert [e["data"]["i"] for e in store.trail_read(target=f"t{p}")] == list(range(per_proc))
    report = verify_trail(store)
    assert report.ok, report.problems
    assert store.kv_get("trail", "head") == ({"seq": 100, "hash": events[-1]["hash"]}, 100)
