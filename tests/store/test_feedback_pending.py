"""Feedback that arrives before its call, ordered by when it was given: every backend.

Feedback may reach a store before the record it judges (another worker took the click
while the serving worker still held the record in its write queue). The store keeps it
and folds it into the record when that arrives; per field the feedback *given* last wins,
whatever order the batches are written in; nothing counts twice; and what waits is bounded.
"""

from __future__ import annotations

import json
import multiprocessing
import random
import sqlite3
import time
import traceback

import pytest

from sil_core.aggregates import ALL_TIME, BUCKET_S, cells_for
from sil_core.records import CallRecord, Feedback, Outcome
from sil_core.store import open_store

from ..conftest import PG_BASE, store_url

NOW = (time.time() // 3600 - 1) * 3600 + 1800.0  # the middle of the last hour (within every retention)
SPAWN = multiprocessing.get_context("spawn")


def rec(i, target: str = "agent", *, ok: bool = True, ts: float = NOW, duration: float = 0.1,
        version: str | None = "v1", arm: str | None = None, score: float | None = None) -> CallRecord:
    return CallRecord(
        id=f"id-{target}-{i}", target=target, ts=ts, duration_s=duration,
        outcome=Outcome.OK if ok else Outcome.ERROR, version=version, arm=arm, score=score,
    )


def totals(store, target: str = "agent", since_hour: int | None = None) -> tuple:
    """``(n, successes, failures, lat_n, histogram total, score_n, score_sum)`` over a target's cells."""
    cells = store.cells(target, since_hour=since_hour).values()
    return (
        sum(c.n for c in cells), sum(c.successes for c in cells), sum(c.failures for c in cells),
        sum(c.lat_n for c in cells), sum(sum(c.hist.values()) for c in cells), sum(c.score_n for c in cells),
        round(sum(c.score_sum for c in cells), 9),
    )


def assert_cells_match_records(store, target: str = "agent") -> None:
    """The store's cells (all-time and hourly) equal a recomputation from its records."""
    records = store.read_calls(target, limit=1_000_000)
    expected = cells_for(records)
    for hourly in (False, True):
        want: dict = {}
        for (_, version, arm, hour), cell in expected.items():
            if (hour == ALL_TIME) != hourly:
                want[(version, arm)] = cell if (version, arm) not in want else want[(version, arm)].add(cell)
        got = store.cells(target, since_hour=0 if hourly else None)
        assert set(got) == set(want)
        for key, cell in want.items():
            mine = got[key]
            assert (mine.n, mine.successes, mine.failures, mine.lat_n, mine.score_n, mine.hist) == (
                cell.n, cell.successes, cell.failures, cell.lat_n, cell.score_n, cell.hist), key
            assert mine.score_sum == pytest.approx(cell.score_sum) and mine.lat_sum == pytest.approx(cell.lat_sum)


# -- on every backend -----------------------------------------------------------------------------
def test_feedback_before_its_record_is_applied_when_the_record_arrives(store):
    assert store.write([], [Feedback("id-agent-1", success=False, score=0.25, ts=NOW + 10)]) == []
    assert store.write([], [Feedback("id-agent-2", score=0.75, ts=NOW + 11)]) == []
    assert store.get_call("id-agent-1") is None and store.stats("agent").n == 0
    changed = store.write([rec(1), rec(2), rec(3)])
    one, two = store.get_call("id-agent-1"), store.get_call("id-agent-2")
    assert (one.success, one.feedback_score, one.feedback_success_ts, one.feedback_score_ts) == (False, 0.25, NOW + 10, NOW + 10)
    assert (two.success, two.effective_score, two.feedback_success_ts) == (True, 0.75, None)
    # the records' first contribution to the cells already holds the feedback: all-time and hourly
    assert totals(store) == (3, 2, 1, 2, 2, 2, 1.0)
    assert totals(store, since_hour=int(NOW // BUCKET_S)) == (3, 2, 1, 2, 2, 2, 1.0)
    assert_cells_match_records(store)
    # write() reports the new calls whose effective success or score the waiting feedback changed
    assert sorted((r.id, r.success, r.effective_score) for r in changed) == [
        ("id-agent-1", False, 0.25), ("id-agent-2", True, 0.75)]
    # a stored call judged later is reported too; feedback that changes nothing is not
    changed = store.write([], [Feedback("id-agent-3", success=False, ts=NOW + 20),
                               Feedback("id-agent-2", score=0.75, ts=NOW + 12)])
    assert [(r.id, r.success) for r in changed] == [("id-agent-3", False)]


def test_feedback_in_the_same_batch_as_its_record_is_reported(store):
    changed = store.write([rec(1), rec(2)], [Feedback("id-agent-1", success=False, ts=NOW)])
    assert [(r.id, r.success) for r in changed] == [("id-agent-1", False)]
    assert totals(store)[:3] == (2, 1, 1)


def test_the_feedback_given_last_wins_whatever_the_write_order(store):
    store.write([rec(1), rec(2, ok=False)])
    store.write([], [Feedback("id-agent-1", success=False, ts=NOW + 20)])
    changed = store.write([], [Feedback("id-agent-1", success=True, ts=NOW + 10)])  # given earlier, written later
    assert changed == [] and store.get_call("id-agent-1").success is False
    assert totals(store)[:3] == (2, 0, 2)
    # per field: this one's score is the newest score, its success is older than the success
    store.write([], [Feedback("id-agent-1", success=True, score=0.9, ts=NOW + 15)])
    store.write([], [Feedback("id-agent-1", score=0.1, ts=NOW + 12)])
    got = store.get_call("id-agent-1")
    assert (got.success, got.feedback_score, got.feedback_success_ts, got.feedback_score_ts) == (False, 0.9, NOW + 20, NOW + 15)
    # two pieces of feedback waiting for their call, written in reverse order of ts
    store.write([], [Feedback("id-agent-3", success=True, score=0.2, ts=NOW + 30)])
    store.write([], [Feedback("id-agent-3", success=False, score=0.8, ts=NOW + 25)])
    store.write([rec(3, ok=False)])
    got = store.get_call("id-agent-3")
    assert (got.success, got.effective_score) == (True, 0.2)
    # and in one batch, later-given first
    store.write([], [Feedback("id-agent-4", success=False, ts=NOW + 9), Feedback("id-agent-4", success=True, ts=NOW + 8)])
    store.write([rec(4)], [Feedback("id-agent-4", success=True, ts=NOW + 7)])
    assert store.get_call("id-agent-4").success is False
    assert totals(store)[:3] == (4, 1, 3)
    assert_cells_match_records(store)


def test_retried_batches_and_duplicate_feedback_count_once(store):
    early = [Feedback("id-agent-1", success=False, score=0.0, ts=NOW + 5)]
    store.write([], early)
    store.write([], early)  # the same feedback again, still waiting
    batch = [rec(1), rec(2)]
    late = [Feedback("id-agent-2", success=False, ts=NOW + 6)]
    first = store.write(batch, late)
    assert sorted(r.id for r in first) == ["id-agent-1", "id-agent-2"]
    assert store.write(batch, late) == []  # the flusher retried the whole batch
    assert store.write([], early + late) == []  # and the feedback once more
    assert store.write([rec(1)]) == []  # a record written twice
    assert totals(store) == (2, 0, 2, 0, 0, 1, 0.0)
    assert store.count_calls() == 2
    assert_cells_match_records(store)


def test_feedback_without_a_time_is_ordered_by_when_it_is_written(store):
    store.write([rec(1)])
    store.write([], [Feedback("id-agent-1", success=False)])
    assert store.get_call("id-agent-1").feedback_success_ts == pytest.approx(time.time(), abs=60)
    store.write([], [Feedback("id-agent-1", success=True, ts=NOW - 3600)])  # given before: loses
    store.write([], [Feedback("id-agent-2", score=0.5)])
    store.write([rec(2)])
    assert store.get_call("id-agent-1").success is False and store.get_call("id-agent-2").effective_score == 0.5


def test_pending_feedback_is_pruned_beyond_a_count(url):
    store = open_store(url, pending_max=3)
    try:
        for i in range(5):  # one write each: received in this order
            store.write([], [Feedback(f"id-agent-{i}", success=False, ts=NOW + i)])
        store.write([rec(i) for i in range(5)])
        assert [store.get_call(f"id-agent-{i}").success for i in range(5)] == [True, True, False, False, False]
        assert totals(store)[:3] == (5, 2, 3)
    finally:
        store.close()


def test_pending_feedback_is_pruned_by_age(url):
    store = open_store(url, pending_max_age_s=0.5)
    try:
        store.write([], [Feedback("id-agent-old", success=False, ts=NOW)])
        time.sleep(0.7)
        store.write([], [Feedback("id-agent-new", success=False, ts=NOW)])
        store.write([rec("old"), rec("new")])
        assert store.get_call("id-agent-old").success is True  # waited too long: dropped
        assert store.get_call("id-agent-new").success is False
        assert totals(store)[:3] == (2, 1, 1)
    finally:
        store.close()


# -- stores written by the code before feedback times ---------------------------------------------
def _check_upgraded(store) -> None:
    """A store of the previous schema, holding ``old-1`` (ok, then a feedback failure without
    a time), keeps working: reads, ordered feedback, feedback before its record."""
    got = store.get_call("old-1")
    assert (got.success, got.feedback_success_ts) == (False, None)
    assert totals(store)[:3] == (1, 0, 1)
    store.write([], [Feedback("old-1", success=True, ts=NOW)])  # a time beats an unknown time
    store.write([], [Feedback("old-1", success=False, ts=NOW - 1)])
    store.write([], [Feedback("id-agent-7", success=False, score=0.5, ts=NOW)])
    store.write([rec(7)])
    assert store.get_call("old-1").success is True and store.get_call("id-agent-7").success is False
    assert totals(store)[:3] == (2, 1, 1)
    assert_cells_match_records(store)


def _old_record() -> CallRecord:
    return CallRecord("old-1", "agent", NOW, 0.1, Outcome.OK, version="v1", feedback_success=False)


def test_an_sqlite_store_of_the_previous_schema_opens_and_keeps_working(tmp_path):
    from sil_core.store.sqlite import _CELL_UPSERT, MIGRATIONS

    path = tmp_path / "old.db"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE sil_schema_version (version INTEGER NOT NULL)")
    for script in MIGRATIONS[:2]:  # the schema as released before feedback times (append-only)
        for statement in filter(str.strip, script.split(";")):
            conn.execute(statement)
    conn.execute("INSERT INTO sil_schema_version VALUES (2)")
    r = _old_record()
    conn.execute("INSERT INTO sil_calls (id, target, ts, duration_s, outcome, version, attempt, feedback_success) "
                 "VALUES (?, ?, ?, ?, ?, ?, 1, 0)", (r.id, r.target, r.ts, r.duration_s, r.outcome, r.version))
    conn.executemany(_CELL_UPSERT, [(*key, *cell.values()) for key, cell in cells_for([r]).items()])
    conn.close()
    with open_store(f"sqlite:///{path}") as store:
        _check_upgraded(store)
    with open_store(f"sqlite:///{path}") as store:  # and again, migrated
        assert store.get_call("id-agent-7").feedback_score == 0.5


def test_a_postgresql_store_of_the_previous_schema_opens_and_keeps_working(pg_schema):
    import psycopg

    from sil_core.store.postgres import MIGRATIONS, _Sql, quote_ident

    r = _old_record()
    with psycopg.connect(PG_BASE, autocommit=True) as conn:
        schema = quote_ident(pg_schema)
        conn.execute(f"CREATE SCHEMA {schema}")
        conn.execute(f"CREATE TABLE {schema}.sil_schema_version "
                     "(version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())")
        for number, script in enumerate(MIGRATIONS[:3], start=1):  # the schema as released before
            for statement in filter(str.strip, script.format(schema=schema).split(";")):
                conn.execute(statement)
            conn.execute(f"INSERT INTO {schema}.sil_schema_version (version) VALUES (%s)", (number,))
        conn.execute(f"INSERT INTO {schema}.sil_calls (id, target, ts, duration_s, outcome, version, feedback_success) "
                     "VALUES (%s, %s, %s, %s, %s, %s, false)", (r.id, r.target, r.ts, r.duration_s, r.outcome, r.version))
        sql = _Sql(pg_schema)
        rows = [(*key, *cell.values()) for key, cell in sorted(cells_for([r]).items())]
        conn.execute(sql.upsert_cells, [list(col) for col in zip(*rows)])
    with open_store(f"{PG_BASE}?schema={pg_schema}") as store:
        _check_upgraded(store)


def test_a_jsonl_store_written_before_feedback_times_keeps_working(tmp_path):
    from sil_core.store.jsonl import JsonlStore

    folder = tmp_path / "old"
    folder.mkdir()
    r = _old_record()
    r.feedback_success = None
    with open(folder / "calls.jsonl", "w", encoding="utf-8") as f:  # lines as the previous version wrote them
        f.write(json.dumps(r.to_dict(), ensure_ascii=False) + "\n")
        f.write(json.dumps({"feedback": "old-1", "success": False, "score": None}) + "\n")
    store = JsonlStore(folder)
    try:
        store.rebuild_aggregates()
        _check_upgraded(store)
    finally:
        store.close()


# -- many processes: feedback reaches the store before its records ---------------------------------
def _clicks(n_calls: int, seed: int) -> dict[str, list[tuple]]:
    """Per feedback process, its clicks ``(call_id, success, score, ts)``: round 1 (every call,
    before any record is written) and round 2 (while the records are being written)."""
    rng = random.Random(seed)
    out: dict[str, list[tuple]] = {}
    for proc in (1, 2, 3):
        for rnd in (1, 2):
            clicks = [(f"c{i}", rng.random() < 0.5, round(rng.random(), 3), NOW + rng.uniform(0, 1000))
                      for i in range(n_calls) if rnd == 1 or rng.random() < 0.5]
            rng.shuffle(clicks)
            out[f"{proc}-{rnd}"] = clicks
    return out


def _mp_role(url: str, role: int, n_calls: int, seed: int, barrier) -> None:
    store = open_store(url)
    try:
        clicks = _clicks(n_calls, seed)
        if role == 0:  # serves the calls: writes their records once the first clicks are in
            barrier.wait(timeout=60)
            ids = list(range(n_calls))
            random.Random(seed + 1).shuffle(ids)
            for start in range(0, n_calls, 20):
                store.write([CallRecord(f"c{i}", "agent", NOW + i, 0.01 + (i % 7) / 100,
                                        Outcome.OK if i % 3 else Outcome.ERROR, version="v1",
                                        score=0.5 if i % 2 else None) for i in ids[start : start + 20]])
            return
        for rnd in (1, 2):
            mine = clicks[f"{role}-{rnd}"]
            for start in range(0, len(mine), 7):
                store.write([], [Feedback(cid, success=s, score=sc, ts=t) for cid, s, sc, t in mine[start : start + 7]])
            if rnd == 1:
                barrier.wait(timeout=60)
    finally:
        store.close()


def _mp_child(queue, url: str, role: int, n_calls: int, seed: int, barrier) -> None:
    try:
        _mp_role(url, role, n_calls, seed, barrier)
        queue.put(("ok", role))
    except BaseException:
        queue.put(("error", traceback.format_exc()))


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_four_processes_feedback_before_records_none_lost_last_click_wins(kind, tmp_path, request):
    url = store_url(kind, tmp_path, request)
    n_calls, seed = 300, 20240611
    open_store(url).close()  # the schema exists before the race
    queue, barrier = SPAWN.Queue(), SPAWN.Barrier(4)
    procs = [SPAWN.Process(target=_mp_child, args=(queue, url, role, n_calls, seed, barrier)) for role in range(4)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(30)
    assert all(status == "ok" for status, _ in results), [v for s, v in results if s != "ok"]
    last: dict[str, tuple] = {}
    for clicks in _clicks(n_calls, seed).values():
        for cid, success, score, ts in clicks:
            if cid not in last or ts > last[cid][2]:
                last[cid] = (success, score, ts)
    with open_store(url) as store:
        got = {r.id: r for r in store.read_calls("agent", limit=10 * n_calls)}
        assert len(got) == n_calls
        lost = sum(1 for cid, (success, score, _) in last.items()
                   if (got[cid].success, got[cid].effective_score) != (success, score))
        print(f"\n{kind}: {n_calls} calls, {sum(map(len, _clicks(n_calls, seed).values()))} clicks "
              f"from 3 processes before/while 1 process wrote the records: {lost} calls not at their last click")
        assert lost == 0
        assert totals(store)[:3] == (n_calls, sum(1 for s, _, _ in last.values() if s),
                                     sum(1 for s, _, _ in last.values() if not s))
        assert_cells_match_records(store)
