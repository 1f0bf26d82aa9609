"""The JSONL backend beyond the contract: file layout, torn and corrupt lines, rotation,
compaction, pruning of old hourly cells, feedback across handles, and many processes
writing at once."""

from __future__ import annotations

import gzip
import json
import multiprocessing
import os
import re
import sys
import threading
import time

import pytest

from sil_core.errors import ConfigError, StoreError
from sil_core.records import CallRecord, Feedback, Outcome
from sil_core.aggregates import ALL_TIME, BUCKET_S
from sil_core.store import open_store
from sil_core.store._table import CellTable
from sil_core.store.jsonl import JsonlStore

# mid-hour, by the wall clock: hourly cells older than cell_retention_hours are pruned
NOW = float(int(time.time()) // BUCKET_S * BUCKET_S + BUCKET_S // 2)
DAY = 86400


def rec(i: int, target: str = "agent", *, ts: float | None = None, ok: bool = True, msg: str | None = None) -> CallRecord:
    return CallRecord(
        id=f"{target}-{i}", target=target, ts=NOW + i if ts is None else ts, duration_s=0.1,
        outcome=Outcome.OK if ok else Outcome.ERROR, error_message=msg, version="v1",
        context='{"user":"u1"}',
    )


@pytest.fixture
def path(tmp_path):
    return tmp_path / "store"


@pytest.fixture
def store(path):
    s = JsonlStore(path, fsync=False)
    yield s
    s.close()


def lines(store: JsonlStore) -> list[str]:
    return store.calls_path.read_text(encoding="utf-8").splitlines()


# -- layout and configuration --------------------------------------------------------------
def test_open_store_url_and_file_layout(tmp_path):
    s = open_store(f"jsonl:///{tmp_path / 'd'}", fsync=False)
    try:
        assert isinstance(s, JsonlStore)
        assert s.capabilities == {"rotation", "compaction", "multiprocess", "retention"}
        s.write([rec(1, msg="ünïcode ✓")])
        assert sorted(p.name for p in (tmp_path / "d").iterdir()) == [".lock", "aggregates.json", "calls.jsonl"]
        [line] = lines(s)
        assert "ünïcode ✓" in line  # ensure_ascii=False
        assert json.loads(line)["id"] == "agent-1"
        agg = json.loads((tmp_path / "d" / "aggregates.json").read_text())
        assert agg["format"] == 2 and len(agg["cells"]) == 2  # the hour cell and the all-time cell
    finally:
        s.close()


@pytest.mark.parametrize("options", [{"max_bytes": 0}, {"max_bytes": -5}, {"max_bytes": 1.5},
                                     {"max_archives": 0}, {"max_archives": -1},
                                     {"cell_retention_hours": 0}, {"cell_retention_hours": -1.0},
                                     {"cell_retention_hours": float("nan")}, {"cell_retention_hours": float("inf")},
                                     {"cell_retention_hours": True}, {"cell_retention_hours": "192"}])
def test_bad_limits_raise_config_error(tmp_path, options):
    with pytest.raises(ConfigError):
        JsonlStore(tmp_path, **options)
    with pytest.raises(ConfigError):
        open_store(f"jsonl:///{tmp_path}", **options)


def test_closed_store_raises(store):
    store.close()
    with pytest.raises(StoreError):
        store.write([rec(1)])


# -- torn and corrupt lines ----------------------------------------------------------------
def test_torn_last_line_is_skipped_counted_and_not_glued(path, store):
    store.write([rec(1), rec(2)])
    with open(store.calls_path, "ab") as f:
        f.write(b'{"id": "agent-3", "target": "agent", "ts": "2027-01-')  # a crash mid-write
    other = JsonlStore(path, fsync=False)  # a fresh process's view
    try:
        assert other.count_calls() == 2 and other.corrupt_lines == 1
        other.write([rec(4)])
    finally:
        other.close()
    raw = lines(store)
    assert len(raw) == 4 and raw[2].endswith('"ts": "2027-01-')  # terminated, kept for inspection
    assert json.loads(raw[3])["id"] == "agent-4"  # the next append is intact
    assert [r.id for r in store.read_calls()] == ["agent-1", "agent-2", "agent-4"]
    assert store.corrupt_lines == 1
    assert store.get_call("agent-4") is not None
    assert store.stats("agent").n == 3


def test_torn_line_then_append_by_the_same_handle(store):
    store.write([rec(1)])
    with open(store.calls_path, "ab") as f:
        f.write(b'{"id": "agent-')
    store.write([rec(2)], [Feedback("agent-1", success=False)])
    assert [r.id for r in store.read_calls()] == ["agent-1", "agent-2"] and store.corrupt_lines == 1
    assert store.get_call("agent-1").success is False


def test_corrupt_middle_line_is_skipped(store):
    store.write([rec(1), rec(2), rec(3)])
    raw = lines(store)
    raw.insert(1, "{not json")
    raw.insert(2, '{"id": "x"}')  # valid JSON, not a record
    store.calls_path.write_text("\n".join(raw) + "\n\n", encoding="utf-8")  # and a blank line
    assert [r.id for r in store.read_calls()] == ["agent-1", "agent-2", "agent-3"]
    assert store.corrupt_lines == 2 and store.count_calls() == 3
    store.write([], [Feedback("agent-3", success=False, score=0.25)])
    got = store.get_call("agent-3")
    assert got.feedback_success is False and got.feedback_score == 0.25


def _append_like_a_killed_writer(store: JsonlStore) -> None:
    """Lines appended by a writer killed before it updated aggregates.json."""
    with open(store.calls_path, "a", encoding="utf-8") as f:
        f.write(json.dumps(rec(3, ok=False).to_dict()) + "\n")
        f.write(json.dumps({"feedback": "agent-1", "success": False, "score": None}) + "\n")
        f.write('{"id": "agent-4", "tar')  # and the line it was writing


def test_a_killed_writer_is_repaired_on_open(path, store):
    store.write([rec(1), rec(2)])
    _append_like_a_killed_writer(store)
    assert store.stats("agent").n == 2  # a handle opened before the crash: not yet
    again = JsonlStore(path, fsync=False)
    try:
        s = again.stats("agent")
        assert (s.n, s.successes, s.failures) == (3, 1, 2)
        assert again.count_calls() == 3 and again.corrupt_lines == 1
    finally:
        again.close()
    store.write([rec(5)])  # the old handle's next write does not count them again
    s = store.stats("agent")
    assert (s.n, s.successes, s.failures) == (4, 2, 2)


def test_a_killed_writer_is_repaired_by_the_next_write(store):
    store.write([rec(1), rec(2)])
    _append_like_a_killed_writer(store)
    store.write([rec(5)], [Feedback("agent-3", success=True)])
    s = store.stats("agent")
    assert (s.n, s.successes, s.failures) == (4, 3, 1)
    assert [r.id for r in store.read_calls()] == ["agent-1", "agent-2", "agent-3", "agent-5"]


# -- feedback ------------------------------------------------------------------------------
def test_feedback_is_a_line_folded_into_its_record(path, store):
    store.write([rec(1), rec(2)])
    store.write([], [Feedback("agent-1", success=False, score=0.0, ts=NOW + 5)])
    # the line carries when the feedback was given (the latest-given wins, per field)
    assert json.loads(lines(store)[-1]) == {"feedback": "agent-1", "success": False, "score": 0.0, "ts": NOW + 5}
    again = JsonlStore(path)
    try:
        got = again.get_call("agent-1")
        assert (got.feedback_success, got.feedback_score, got.success) == (False, 0.0, False)
        assert [r.success for r in again.read_calls()] == [False, True]
    finally:
        again.close()


def test_feedback_from_another_handle_is_seen_before_the_next_delta(path, store):
    store.write([rec(1)])  # cached by this handle
    other = JsonlStore(path, fsync=False)
    try:
        other.write([], [Feedback("agent-1", success=False)])
    finally:
        other.close()
    # a stale cache would count the same flip twice
    store.write([], [Feedback("agent-1", success=False)])
    s = store.stats("agent")
    assert (s.successes, s.failures) == (0, 1)
    store.write([], [Feedback("agent-1", success=True)])
    s = store.stats("agent")
    assert (s.successes, s.failures) == (1, 0)


def test_feedback_for_an_unknown_or_archived_call_is_ignored(store):
    store.write([rec(1)])
    store.rotate(force=True)
    store.write([rec(2)], [Feedback("agent-1", success=False), Feedback("nope", success=False)])
    s = store.stats("agent")
    assert (s.n, s.failures) == (2, 0)
    assert [json.loads(line)["id"] for line in lines(store)] == ["agent-2"]


def test_a_retried_batch_is_not_counted_twice(store):
    batch = [rec(1), rec(2), rec(2)]
    store.write(batch)
    store.write(batch)
    assert store.count_calls() == 2 and store.stats("agent").n == 2


# -- aggregates cache ----------------------------------------------------------------------
def test_unchanged_aggregates_are_not_parsed_again(path, store, monkeypatch):
    from sil_core.store import jsonl

    store.write([rec(1)])
    parses = []
    real = jsonl.decode_aggregates
    monkeypatch.setattr(jsonl, "decode_aggregates", lambda data: parses.append(1) or real(data))
    for _ in range(5):
        assert store.stats("agent").n == 1  # our own write: already current
    assert parses == []
    other = JsonlStore(path, fsync=False)
    try:
        other.write([rec(2)])
    finally:
        other.close()
    parses.clear()  # the other handle parsed the file once to merge into it
    assert store.stats("agent").n == 2 and store.stats("agent").n == 2
    assert parses == [1]  # this handle: once for the change, then a stat


def test_corrupt_aggregates_raise_and_can_be_rebuilt(store):
    store.write([rec(1), rec(2, ok=False)], [Feedback("agent-1", score=1.0)])
    store.rotate(force=True)
    store.write([rec(3)])
    store.write([], [Feedback("agent-3", success=False)])
    before = store.stats("agent")
    store.aggregates_path.write_text("{oops", encoding="utf-8")
    with pytest.raises(StoreError, match="rebuild_aggregates"):
        store.stats("agent")
    assert store.rebuild_aggregates() == 3
    assert store.stats("agent") == before


# -- rotation ------------------------------------------------------------------------------
ARCHIVE_NAME = re.compile(r"^calls-\d{8}T\d{12}Z(-\d+)?\.jsonl\.gz$")


def test_rotation_gzips_archives_and_prunes_them(path):
    s = JsonlStore(path, max_bytes=2_000, max_archives=2, fsync=False)
    try:
        written = 0
        for b in range(12):
            s.write([rec(b * 3 + k) for k in range(3)])
            written += 3
            assert s.calls_path.stat().st_size <= 2_000
        archives = s.archives()
        assert len(archives) == 2
        names = sorted(os.listdir(s.archive_dir))
        assert [p.name for p in archives] == names  # no leftovers, oldest first
        assert all(ARCHIVE_NAME.match(n) for n in names)
        archived = []
        for p in archives:
            with gzip.open(p, "rt", encoding="utf-8") as f:
                archived += [json.loads(line)["id"] for line in f]
        active = [r.id for r in s.read_calls(limit=10_000)]
        # the newest archives and the active file hold the newest records, in order
        assert archived + active == [f"agent-{i}" for i in range(written - len(archived) - len(active), written)]
        assert len(archived) + len(active) < written  # older archives were pruned
    finally:
        s.close()


def test_rotate_public_and_name_collisions(store):
    assert store.rotate() is None and store.rotate(force=True) is None  # nothing to rotate
    names = set()
    for i in range(3):  # same microsecond is unlikely, but names must stay unique anyway
        store.write([rec(i)])
        archive = store.rotate(force=True)
        assert archive is not None and archive.exists() and archive.name.endswith(".jsonl.gz")
        names.add(archive.name)
    assert len(names) == 3 and store.count_calls() == 0
    assert store.rotate() is None  # no max_bytes: only forced rotations


def test_rotation_collision_adds_a_counter(store, monkeypatch):
    from sil_core.store import jsonl

    class FrozenClock:
        @staticmethod
        def now(tz=None):
            from datetime import datetime, timezone

            return datetime(2027, 1, 1, tzinfo=timezone.utc)

    monkeypatch.setattr(jsonl, "datetime", FrozenClock)
    store.write([rec(1)])
    a = store.rotate(force=True)
    store.write([rec(2)])
    b = store.rotate(force=True)
    assert a.name == "calls-20270101T000000000000Z.jsonl.gz"
    assert b.name == "calls-20270101T000000000000Z-1.jsonl.gz"


def test_aggregates_survive_rotation(path):
    s = JsonlStore(path, max_bytes=1_500, fsync=False)
    try:
        for i in range(30):
            s.write([rec(i, ok=i % 3 != 0)])
        assert s.archives() and s.count_calls() < 30
        st = s.stats("agent")
        assert (st.n, st.successes, st.failures) == (30, 20, 10)
        assert s.targets() == ["agent"]
    finally:
        s.close()
    fresh = JsonlStore(path)
    try:
        assert fresh.stats("agent").n == 30
    finally:
        fresh.close()


# -- compaction and retention --------------------------------------------------------------
def test_compact_keeps_newest_per_target(store):
    store.write([rec(i, target="a") for i in range(10)] + [rec(i, target="b") for i in range(3)])
    store.write([], [Feedback("a-9", success=False)])
    with open(store.calls_path, "a", encoding="utf-8") as f:
        f.write("garbage\n")
    before = store.stats("a")
    assert store.compact(4) == 6
    assert [r.id for r in store.read_calls("a")] == ["a-6", "a-7", "a-8", "a-9"]
    assert [r.id for r in store.read_calls("b")] == ["b-0", "b-1", "b-2"]
    assert store.corrupt_lines == 0 and len(lines(store)) == 7  # feedback folded, garbage dropped
    assert store.get_call("a-9").feedback_success is False
    assert store.stats("a") == before and store.stats("b").n == 3  # aggregates untouched
    assert store.compact(4) == 0
    with pytest.raises(ConfigError):
        store.compact(-1)
    # feedback and appends keep working on the rewritten file
    store.write([rec(20, target="a")], [Feedback("a-8", success=False)])
    assert store.stats("a").failures == 2 and store.count_calls("a") == 5


def test_retain_prunes_old_hourly_cells_but_not_all_time(store):
    store.write([rec(1, ts=NOW - 30 * 86400), rec(2, ts=NOW)])
    assert store.retain(max_age_s=86400, now=NOW) == 1
    assert [r.id for r in store.read_calls()] == ["agent-2"]
    assert store.stats("agent").n == 2
    assert store.stats("agent", since=NOW - 60 * 86400).n == 1


# -- pruning of old hourly cells ---------------------------------------------------------
def hours_on_disk(store: JsonlStore) -> set[int]:
    return {row[3] for row in json.loads(store.aggregates_path.read_text())["cells"] if row[3] != ALL_TIME}


def test_hourly_cells_past_the_retention_are_pruned_on_write(tmp_path):
    now = time.time()
    old = [rec(i, ts=now - 10 * DAY - i * 3600, ok=i % 2 == 0) for i in range(5)]
    recent = [rec(10 + i, ts=now - i * 3600) for i in range(3)]
    keep = JsonlStore(tmp_path / "keep", fsync=False, cell_retention_hours=None)
    pruned = JsonlStore(tmp_path / "pruned", fsync=False)  # 8 days by default
    try:
        for s in (keep, pruned):
            s.write(old + recent)
        cutoff = int((now - 8 * DAY) // BUCKET_S)
        assert min(hours_on_disk(keep)) < cutoff
        assert min(hours_on_disk(pruned)) >= cutoff and len(hours_on_disk(pruned)) == 3
        # all-time cells are kept: whole-history statistics are unchanged
        assert pruned.stats("agent") == keep.stats("agent")
        assert (pruned.stats("agent").n, pruned.stats("agent").failures) == (8, 2)
        # recent windows are unaffected
        recent_hour = int((now - 3 * 3600) // BUCKET_S)
        assert pruned.cells("agent", since_hour=recent_hour) == keep.cells("agent", since_hour=recent_hour)
        assert sum(c.n for c in pruned.cells("agent", since_hour=recent_hour).values()) == 3
        # a window reaching back past the retention sees only what is left; raw records stay
        assert pruned.stats("agent", since=now - 30 * DAY).n == 3 and keep.stats("agent", since=now - 30 * DAY).n == 8
        assert pruned.count_calls() == 8
        # feedback on a call whose hour is gone still counts in the all-time cell
        for s in (keep, pruned):
            s.write([], [Feedback("agent-1", success=True)])
        assert pruned.stats("agent") == keep.stats("agent")
        assert min(hours_on_disk(pruned)) >= cutoff
    finally:
        keep.close()
        pruned.close()


def test_pruning_scans_the_table_once_per_hour_not_per_batch(path, monkeypatch):
    from sil_core.store import jsonl

    clock = [NOW]
    monkeypatch.setattr(jsonl.time, "time", lambda: clock[0])
    scans = []
    real = CellTable.prune_hours
    monkeypatch.setattr(CellTable, "prune_hours", lambda self, before: scans.append(before) or real(self, before))
    s = JsonlStore(path, fsync=False, cell_retention_hours=24)
    try:
        aging = int((NOW - 23.5 * 3600) // BUCKET_S)
        s.write([rec(1, ts=NOW - 23.5 * 3600)])  # inside the retention, for now
        for i in range(5):
            s.write([rec(10 + i)], [Feedback("agent-1", success=False)] if i == 2 else [])
        assert len(scans) == 1  # the first write; later batches look at their own cells only
        assert aging in hours_on_disk(s)
        clock[0] += 2 * 3600  # agent-1's hour is now past the retention
        s.write([rec(20, ts=clock[0])])
        assert len(scans) == 2 and aging not in hours_on_disk(s)
        # a call already past the retention: counted all-time, its hour never stored, no scan
        s.write([rec(21, ts=clock[0] - 3 * DAY)])
        assert len(scans) == 2 and min(hours_on_disk(s)) >= int((clock[0] - DAY) // BUCKET_S)
        st = s.stats("agent")
        assert (st.n, st.failures) == (8, 1)
    finally:
        s.close()


def test_a_dead_writers_old_cells_are_pruned_when_recovered(store):
    store.write([rec(1)])
    for i, feedback in ((2, [Feedback("agent-3", success=False)]), (4, [Feedback("nope", success=False)])):
        with open(store.calls_path, "a", encoding="utf-8") as f:  # a writer killed before its aggregates update
            f.write(json.dumps(rec(i, ts=NOW - 20 * DAY).to_dict()) + "\n")
        store.write([rec(3)] if i == 2 else [], feedback)  # the second batch appends nothing
        assert hours_on_disk(store) == {int(NOW // BUCKET_S)}
    st = store.stats("agent")
    assert (st.n, st.failures) == (4, 1)


def test_a_table_saved_by_another_handle_is_pruned_by_the_next_write(path):
    keeper = JsonlStore(path, fsync=False, cell_retention_hours=None)
    try:
        keeper.write([rec(1, ts=time.time() - 20 * DAY)])
        assert len(hours_on_disk(keeper)) == 1
        pruner = JsonlStore(path, fsync=False)
        try:
            t = time.time()
            pruner.write([rec(2, ts=t)])
            assert hours_on_disk(pruner) == {int(t // BUCKET_S)}
            assert pruner.stats("agent").n == 2
        finally:
            pruner.close()
        assert keeper.stats("agent").n == 2 and keeper.stats("agent", since=time.time() - 30 * DAY).n == 1
    finally:
        keeper.close()


# -- concurrency ---------------------------------------------------------------------------
PROCS, THREADS, PER_THREAD, FEEDBACK_EVERY = 4, 2, 2000, 100


def _hammer(directory: str, proc: int) -> None:
    store = JsonlStore(directory, fsync=False)

    def run(thread: int) -> None:
        for i in range(PER_THREAD):
            prefix = f"p{proc}-t{thread}"
            fb = [Feedback(f"{prefix}-{i - 1}", success=False)] if i % FEEDBACK_EVERY == 1 else []
            store.write([CallRecord(id=f"{prefix}-{i}", target=f"agent{thread}", ts=NOW + i,
                                    duration_s=0.01, outcome=Outcome.OK)], fb)

    threads = [threading.Thread(target=run, args=(t,)) for t in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    store.close()


def _context():
    return multiprocessing.get_context("fork" if sys.platform.startswith("linux") else "spawn")


def test_processes_and_threads_lose_nothing(path):
    procs = [_context().Process(target=_hammer, args=(str(path), p)) for p in range(PROCS)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0] * PROCS
    total = PROCS * THREADS * PER_THREAD
    store = JsonlStore(path)
    try:
        rows = store.read_calls(limit=total + 10)
        assert len(rows) == total and len({r.id for r in rows}) == total
        assert store.count_calls() == total and store.corrupt_lines == 0
        stats = [store.stats(f"agent{t}") for t in range(THREADS)]
        assert sum(s.n for s in stats) == total
        flipped = PROCS * THREADS * (PER_THREAD // FEEDBACK_EVERY)
        assert sum(s.failures for s in stats) == flipped
        assert sum(1 for r in rows if r.feedback_success is False) == flipped
        assert all(line.endswith("}") for line in lines(store))
    finally:
        store.close()


_INHERITED: JsonlStore | None = None


def _write_inherited(proc: int) -> None:
    for i in range(300):
        _INHERITED.write([rec(i, target=f"child{proc}")])


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_store_opened_before_fork_still_excludes(path):
    global _INHERITED
    _INHERITED = JsonlStore(path, fsync=False)
    try:
        procs = [multiprocessing.get_context("fork").Process(target=_write_inherited, args=(p,)) for p in range(2)]
        for p in procs:
            p.start()
        for i in range(300):
            _INHERITED.write([rec(i, target="parent")])
        for p in procs:
            p.join(60)
        assert [p.exitcode for p in procs] == [0, 0]
        assert _INHERITED.count_calls() == 900 and _INHERITED.corrupt_lines == 0
        assert sum(_INHERITED.stats(t).n for t in ("parent", "child0", "child1")) == 900
    finally:
        _INHERITED.close()
        _INHERITED = None


def test_rotation_under_concurrent_writers(path):
    store = JsonlStore(path, max_bytes=20_000, max_archives=100, fsync=False)

    def run(t: int) -> None:
        for i in range(150):
            store.write([rec(i, target=f"t{t}")])

    threads = [threading.Thread(target=run, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        ids = [r.id for r in store.read_calls(limit=10_000)]
        for p in store.archives():
            with gzip.open(p, "rt", encoding="utf-8") as f:
                ids += [json.loads(line)["id"] for line in f]
        assert len(ids) == len(set(ids)) == 600
        assert sum(store.stats(f"t{t}").n for t in range(4)) == 600
    finally:
        store.close()


# -- state rows and the trail ----------------------------------------------------------------
def test_state_and_trail_files_are_human_readable(path, store):
    from sil_core.trail import append_event, verify_trail

    store.write([rec(1)])
    assert not store.state_path.exists() and not store.trail_path.exists()  # created on first use
    assert store.kv_put("change", "c1", {"state": "proposed", "note": "ünï ✓"}, expect_rev=0) == 1
    assert store.kv_put("change", "c1", {"state": "canary", "note": "ünï ✓"}, expect_rev=1) == 2
    first = append_event(store, "change_proposed", "agent", change_id="c1", note="ünï ✓")
    second = append_event(store, "paused", None, actor="ops")
    assert sorted(p.name for p in path.iterdir()) == [
        ".lock", "aggregates.json", "calls.jsonl", "state.json", "trail.jsonl"]
    text = store.state_path.read_text(encoding="utf-8")
    assert "ünï ✓" in text and len(text.splitlines()) > 5  # indented, not escaped
    assert json.loads(text) == {
        "change": {"c1": {"value": {"state": "canary", "note": "ünï ✓"}, "rev": 2}},
        "trail": {"head": {"value": {"seq": 2, "hash": second["hash"]}, "rev": 2}},
    }
    raw = store.trail_path.read_text(encoding="utf-8")
    assert raw.endswith("\n") and "ünï ✓" in raw
    assert [json.loads(line) for line in raw.splitlines()] == [first, second]
    assert all(list(json.loads(line)) == sorted(json.loads(line)) for line in raw.splitlines())
    assert verify_trail(store).ok


def test_a_torn_trail_line_is_reported_and_never_glued(path, store):
    from sil_core.trail import append_event, verify_trail

    e1, e2 = append_event(store, "paused", "t"), append_event(store, "resumed", "t")
    with open(store.trail_path, "ab") as f:
        f.write(b'{"seq": 3, "type": "verd')  # a crash mid-append: the head still says seq 2
    other = JsonlStore(path, fsync=False)  # a fresh process's view
    try:
        assert other.trail_read() == [e1, e2, {"seq": None, "corrupt": '{"seq": 3, "type": "verd'}]
        assert other.trail_read(target="t") == [e1, e2]
        report = verify_trail(other)
        assert not report.ok and any("seq None" in p for p in report.problems)
        e3 = append_event(other, "verdict", "t")  # builds on the last complete event
    finally:
        other.close()
    assert (e3["seq"], e3["prev_hash"]) == (3, e2["hash"])
    raw = store.trail_path.read_text(encoding="utf-8").splitlines()
    assert len(raw) == 4 and raw[2] == '{"seq": 3, "type": "verd'  # terminated, kept for inspection
    assert json.loads(raw[3]) == e3  # the next append is intact
    assert [e["seq"] for e in store.trail_read()] == [1, 2, None, 3]
    assert [e["seq"] for e in store.trail_read(after_seq=2)] == [None, 3]
    assert store.trail_read(after_seq=3) == []
    assert store.kv_get("trail", "head") == ({"seq": 3, "hash": e3["hash"]}, 3)
    report = verify_trail(store)  # reported, not raised and not hidden
    assert not report.ok and report.head_seq == 3


def test_an_edited_trail_line_surfaces_in_verification(store):
    from sil_core.trail import append_event, verify_trail

    for i in range(4):
        append_event(store, "verdict", "t", i=i)
    raw = store.trail_path.read_text(encoding="utf-8").splitlines()
    raw[1] = raw[1][:-1]  # no longer JSON
    raw[2] = "[1, 2]"  # JSON, but not an event
    store.trail_path.write_text("\n".join(raw) + "\n", encoding="utf-8")
    events = store.trail_read()
    assert [e["seq"] for e in events] == [1, None, None, 4]
    assert events[1] == {"seq": None, "corrupt": raw[1]} and events[2] == {"seq": None, "corrupt": "[1, 2]"}
    assert [e["seq"] for e in store.trail_read(target="t")] == [1, 4]
    assert [e["seq"] for e in store.trail_read(limit=2)] == [1, None]
    report = verify_trail(store)
    assert not report.ok and len(report.problems) >= 2


def test_a_crash_between_append_and_head_update_shows_as_a_head_mismatch(store):
    from sil_core.trail import append_event, event_hash, verify_trail

    e1 = append_event(store, "paused", "t")
    e2 = {"seq": 2, "target": "t", "type": "resumed", "prev_hash": e1["hash"]}
    e2["hash"] = event_hash(e2)
    with open(store.trail_path, "a", encoding="utf-8") as f:  # appended; the head never moved
        f.write(json.dumps(e2, sort_keys=True) + "\n")
    report = verify_trail(store)
    assert report.problems == ["the head anchor says seq 1, the trail ends at seq 2 (truncated or rewritten)"]
    append_event(store, "verdict", "t")  # the next append moves the head on past it
    assert verify_trail(store).ok and [e["seq"] for e in store.trail_read()] == [1, 2, 3]


def test_last_event_is_found_across_read_chunks(store, monkeypatch):
    import sil_core.store._jsonl_format as fmt
    from sil_core.trail import append_event, verify_trail

    monkeypatch.setattr(fmt, "_TAIL_CHUNK", 7)  # every line spans several chunks
    for i in range(3):
        append_event(store, "verdict", "t", i=i, pad="x" * (i * 13))
    with open(store.trail_path, "ab") as f:
        f.write(b"\n{not json\n\n" + b"torn" * 5)
    e4 = append_event(store, "verdict", "t", i=3)
    assert e4["seq"] == 4 and e4["prev_hash"] == store.trail_read(target="t")[2]["hash"]
    assert [e["seq"] for e in store.trail_read()] == [1, 2, 3, None, None, 4]
    assert not verify_trail(store).ok


def test_a_corrupt_state_file_raises_and_is_not_overwritten(store):
    from sil_core.trail import append_event

    store.kv_put("head", "t", {"v": 1}, expect_rev=0)
    store.state_path.write_text('{"head": {"t": {"value": {"v": 1}, "rev": ', encoding="utf-8")
    for act in (lambda: store.kv_get("head", "t"), lambda: store.kv_list("head"),
                lambda: store.kv_put("head", "t", {"v": 2}, expect_rev=None),
                lambda: append_event(store, "paused", "t")):
        with pytest.raises(StoreError, match="state.json is corrupt"):
            act()
    assert store.state_path.read_text(encoding="utf-8").endswith('"rev": ')
    assert not store.trail_path.exists()  # the append stopped before writing


def test_a_value_json_cannot_hold_changes_nothing(store):
    store.kv_put("head", "t", {"v": 1}, expect_rev=0)
    before = store.state_path.read_bytes()
    with pytest.raises(TypeError):
        store.kv_put("head", "t", {"v": object()}, expect_rev=1)
    assert store.state_path.read_bytes() == before and store.kv_get("head", "t") == ({"v": 1}, 1)


def test_rotation_compaction_and_retention_leave_state_and_trail_alone(path):
    from sil_core.trail import append_event, verify_trail

    store = JsonlStore(path, max_bytes=2_000, fsync=False)
    try:
        store.kv_put("change", "c1", {"state": "canary"}, expect_rev=0)
        append_event(store, "paused", "agent")
        files = (store.state_path, store.trail_path)
        before = [(p.read_bytes(), p.stat().st_ino) for p in files]
        for i in range(40):
            store.write([rec(i, ts=NOW - 40 * DAY if i % 2 else None)])
        assert store.archives()
        store.rotate(force=True)
        store.write([rec(100), rec(101)])
        assert store.compact(1) == 1
        store.write([rec(102, ts=NOW - 40 * DAY)])
        assert store.retain(max_age_s=DAY) == 1
        store.rebuild_aggregates()
        assert [(p.read_bytes(), p.stat().st_ino) for p in files] == before
        assert store.kv_get("change", "c1") == ({"state": "canary"}, 1) and verify_trail(store).ok
    finally:
        store.close()


def _append_trail(directory: str, proc: int, count: int) -> None:
    from sil_core.trail import append_event

    store = JsonlStore(directory)  # fsync on, as in production
    try:
        for i in range(count):
            append_event(store, "verdict", f"t{proc}", proc=proc, i=i)
    finally:
        store.close()


def test_processes_append_one_verified_trail(path):
    from sil_core.trail import verify_trail

    procs_n, per_proc = 4, 50
    JsonlStore(path).close()
    procs = [_context().Process(target=_append_trail, args=(str(path), p, per_proc)) for p in range(procs_n)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0] * procs_n
    store = JsonlStore(path)
    try:
        events = store.trail_read()
        assert [e["seq"] for e in events] == list(range(1, procs_n * per_proc + 1))
        for p in range(procs_n):
            assert [e["data"]["i"] for e in store.trail_read(target=f"t{p}")] == list(range(per_proc))
        report = verify_trail(store)
        assert report.ok, report.problems
        assert store.kv_get("trail", "head") == ({"seq": procs_n * per_proc, "hash": events[-1]["hash"]}, procs_n * per_proc)
        assert len(store.trail_path.read_text(encoding="utf-8").splitlines()) == procs_n * per_proc
    finally:
        store.close()


# -- metrics -----------------------------------------------------------------------------------
@pytest.mark.parametrize("dialect", ["sil", "seed"])
def test_metrics_are_lines_and_cells_rows_and_survive_a_rebuild(path, dialect):
    store = JsonlStore(path, fsync=False, dialect=dialect)
    try:
        r = rec(1)
        r.metrics = {"tokens_in": 4.0}
        store.write([r, rec(2)], [Feedback("agent-1", metrics={"cost_usd": 0.5}, ts=NOW + 5)])
        store.write([], [Feedback("agent-2", metrics={"cost_usd": 1.5}, ts=NOW + 6)])
        [fb_line] = [json.loads(line) for line in lines(store) if line.startswith('{"feedback"')]
        assert fb_line["metrics"] == {"cost_usd": 1.5} and fb_line["ts"] == NOW + 6
        got = {x.id: x for x in store.read_calls("agent")}
        assert got["agent-1"].metrics == {"tokens_in": 4.0}
        assert got["agent-1"].feedback_metrics == {"cost_usd": [0.5, NOW + 5]}
        assert got["agent-2"].feedback_metrics == {"cost_usd": [1.5, NOW + 6]}
        before = {name: (s.n, s.mean) for name, s in store.stats("agent").metrics.items()}
        assert before == {"tokens_in": (1, 4.0), "cost_usd": (2, 1.0)}
        store.rebuild_aggregates()  # from the lines alone: the same moments
        assert {name: (s.n, s.mean) for name, s in store.stats("agent").metrics.items()} == before
        assert store.compact(10) == 0 and store.retain(max_age_s=DAY) == 0
        assert {name: (s.n, s.mean) for name, s in store.stats("agent").metrics.items()} == before
    finally:
        store.close()
