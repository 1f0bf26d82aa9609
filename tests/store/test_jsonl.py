"""The JSONL backend beyond the contract: file layout, torn and corrupt lines, rotation,
compaction, feedback across handles, and many processes writing at once."""

from __future__ import annotations

import gzip
import json
import multiprocessing
import os
import re
import sys
import threading

import pytest

from sil_core.errors import ConfigError, StoreError
from sil_core.records import CallRecord, Feedback, Outcome
from sil_core.store import open_store
from sil_core.store.jsonl import JsonlStore

NOW = 1_800_000_000.0


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
        assert agg["format"] == 1 and len(agg["cells"]) == 2  # the hour cell and the all-time cell
    finally:
        s.close()


@pytest.mark.parametrize("options", [{"max_bytes": 0}, {"max_bytes": -5}, {"max_bytes": 1.5},
                                     {"max_archives": 0}, {"max_archives": -1}])
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
    store.write([], [Feedback("agent-1", success=False, score=0.0)])
    assert json.loads(lines(store)[-1]) == {"feedback": "agent-1", "success": False, "score": 0.0}
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
    real = jsonl.CellTable.from_rows
    monkeypatch.setattr(jsonl.CellTable, "from_rows", classmethod(lambda cls, rows: parses.append(1) or real(rows)))
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
