"""sil_core's JsonlTraceStore, SQLiteTraceStore and standalone AutoRollback: the seed's
file formats and results, on sil stores, with the seed's bugs fixed. Each interop test
runs the installed seed (``self_improving_loop`` 0.1.3) on the same files."""

from __future__ import annotations

import gzip
import json
import multiprocessing
import os
from datetime import datetime, timedelta

import pytest
import self_improving_loop as seed

import sil_core.store._jsonl_format as fmt
from sil_core import (
    AutoRollback, ConfigError, DictConfigAdapter, Guard, JsonlTraceStore, RolloutPolicy, SelfImprovingLoop,
    SQLiteTraceStore, verify_trail,
)
from sil_core.records import Feedback
from sil_core.store.jsonl import JsonlStore


def trace(agent="a", task="t", success=True, **extra) -> dict:
    return {"agent_id": agent, "task": task, "success": success, "duration_sec": 0.25, "error": None if success else "boom",
            "context": {"user": "u1"}, "timestamp": "2026-04-25T10:00:00", **extra}


TRACES = [trace(task="t1"), trace("b", "t2", False, extra=[1, "é"]), trace(task="t1")]  # the last one twice


# -- JsonlTraceStore: the seed's file ---------------------------------------------------------
def test_lines_are_byte_for_byte_the_seeds(tmp_path):
    ours, theirs = JsonlTraceStore(tmp_path / "ours" / "traces.jsonl"), seed.JsonlTraceStore(tmp_path / "seed" / "traces.jsonl")
    for t in TRACES:
        ours.append(t)
        theirs.append(t)
    assert ours.path.read_bytes() == theirs.path.read_bytes()
    assert ours.lock_path == theirs.lock_path.parent.parent / "ours" / "traces.jsonl.lock"  # the seed's lock file name
    assert ours.load() == TRACES and ours.load("a") == [TRACES[0], TRACES[2]]
    assert seed.JsonlTraceStore(ours.path).load() == TRACES
    ours.close()


def test_a_file_the_seed_wrote_is_read_and_counted_once(tmp_path):
    path = tmp_path / "traces.jsonl"
    old = seed.JsonlTraceStore(path)
    for t in TRACES:
        old.append(t)
    for _ in range(2):  # the second open finds the aggregates and counts nothing again
        store = JsonlTraceStore(path)
        assert store.load() == TRACES
        assert store.store.stats("a").n == 2 and store.store.stats("b").failures == 1
        store.close()
    store = JsonlTraceStore(path)
    store.append(trace(task="t3"))
    old.append(trace(task="t4"))  # a seed process still writing: the next write of ours counts its line
    store.append(trace(task="t5"))
    assert [t["task"] for t in store.load("a")] == ["t1", "t1", "t3", "t4", "t5"]
    assert store.store.stats("a").n == 5
    store.close()


def test_sidecars_never_collide_with_a_jsonl_store_in_the_same_folder(tmp_path):
    calls = JsonlStore(tmp_path, fsync=False)
    traces = JsonlTraceStore(tmp_path / "traces.jsonl")
    traces.append(trace())
    with Guard(calls, durability="sync") as guard:
        with guard.call("a"):
            pass
    with Guard(traces.store, durability="sync") as guard:
        with guard.call("a", context={"task": "guarded"}):
            pass
        guard.propose("a", {"p": 1}, adapter=DictConfigAdapter({"a": {"p": 0}}))
    names = sorted(os.listdir(tmp_path))
    assert names == [".lock", "aggregates.json", "calls.jsonl", "traces.jsonl", "traces.jsonl.aggregates.json",
                     "traces.jsonl.lock", "traces.jsonl.state.json", "traces.jsonl.trail.jsonl"]
    assert calls.stats("a").n == 1 and traces.store.stats("a").n == 2
    assert verify_trail(traces.store).ok and calls.trail_read() == []
    traces.close()
    calls.close()


def test_a_guard_writes_seed_lines_that_read_back_as_its_records(tmp_path):
    traces = JsonlTraceStore(tmp_path / "traces.jsonl")
    with Guard(traces.store, durability="sync") as guard:
        with pytest.raises(RuntimeError):
            with guard.call("writer", context={"task": "draft", "n": 2}):
                raise RuntimeError("provider returned 503")
    line = json.loads(traces.path.read_text().splitlines()[-1])
    assert line["agent_id"] == "writer" and line["task"] == "draft" and line["success"] is False
    assert line["error"] == "provider returned 503" and line["_sil"]["outcome"] == "error"
    assert traces.load() == [{k: v for k, v in line.items() if k != "_sil"}]
    [record] = traces.store.read_calls("writer")
    assert record.id == line["_sil"]["id"] and record.error_type == "RuntimeError"
    assert record.context_value() == {"task": "draft", "n": 2}
    traces.close()


def test_identical_traces_stay_separate_traces(tmp_path):
    store = JsonlTraceStore(tmp_path / "traces.jsonl")
    for _ in range(3):
        store.append(trace())
    assert len(store.load()) == 3 and store.store.count_calls() == 3 and store.store.stats("a").n == 3
    ids = [r.id for r in store.store.read_calls("a")]
    assert len(set(ids)) == 3 and all(i.startswith(fmt.SEED_LINE_ID) for i in ids)
    assert store.store.rebuild_aggregates() == 3
    assert store.compact(2) == 1 and len(store.load()) == 2
    store.close()


def test_ids_of_seed_lines_are_stable_across_reads_and_take_feedback(tmp_path):
    store = JsonlTraceStore(tmp_path / "traces.jsonl")
    store.append(trace(task="t1"))
    store.append(trace(task="t2"))
    first = [r.id for r in store.store.read_calls("a")]
    assert [r.id for r in JsonlTraceStore(store.path).store.read_calls("a")] == first
    store.store.write([], [Feedback(first[0], success=False)])
    assert store.store.get_call(first[0]).success is False
    assert store.store.stats("a").failures == 1
    store.append(trace(task="t3"))
    with open(store.path, "a") as f:
        f.write("{not json\n")
    assert store.compact(5) == 0  # rewritten (a corrupt line): the feedback line is folded into its trace's line
    assert store.load() == [trace(task="t1"), trace(task="t2"), trace(task="t3")]
    first_line = json.loads(store.path.read_text().splitlines()[0])
    assert first_line["_sil"] == {"id": first[0], "feedback_success": False}
    assert store.store.get_call(first[0]).success is False and '"feedback"' not in store.path.read_text()
    store.close()


def test_a_torn_last_line_is_never_glued_to_the_next_trace(tmp_path):
    path = tmp_path / "traces.jsonl"
    path.write_text(json.dumps(trace(task="t1")) + "\n" + '{"agent_id": "a", "task": "to')
    store = JsonlTraceStore(path)
    store.append(trace(task="t2"))
    assert [t["task"] for t in store.load()] == ["t1", "t2"]
    assert [t["task"] for t in seed.JsonlTraceStore(path).load()] == ["t1", "t2"]
    store.close()


def test_read_is_bounded_by_limit_and_since(tmp_path, monkeypatch):
    start = datetime(2026, 4, 25, 10, 0, 0)
    with open(tmp_path / "traces.jsonl", "w", encoding="utf-8") as f:  # a file the seed wrote
        for i in range(2000):
            f.write(json.dumps({"agent_id": "ab"[i % 2], "task": f"t{i}", "success": True, "duration_sec": 0.1,
                                "timestamp": (start + timedelta(seconds=i)).isoformat(), "pad": "x" * 80}) + "\n")
    store = JsonlTraceStore(tmp_path / "traces.jsonl")
    assert store.store.stats("a").n == 1000
    read = []
    real = fmt.pread_all
    monkeypatch.setattr(fmt, "pread_all", lambda fd, size, offset=0: read.append(size) or real(fd, size, offset))
    assert [t["task"] for t in store.read("a", limit=3)] == ["t1994", "t1996", "t1998"]
    assert sum(read) <= 1 << 16 < store.path.stat().st_size  # one chunk from the end
    since = start + timedelta(seconds=1995)  # naive: local time, as the seed wrote it
    assert [t["task"] for t in store.read(since=since)] == ["t1995", "t1996", "t1997", "t1998", "t1999"]
    assert [t["task"] for t in store.read("b", since=since.timestamp(), limit=1)] == ["t1999"]
    assert store.read(limit=0) == [] and len(store.read()) == 2000
    with pytest.raises(ValueError):
        store.read(limit=-1)
    store.close()


def test_rotation_names_archives_after_the_file_and_prunes_only_its_own(tmp_path):
    archives = tmp_path / "archives"
    other = JsonlTraceStore(tmp_path / "other.jsonl", archive_dir=archives, max_archives=1)
    other.append(trace(task="other"))
    other.rotate(force=True)
    store = JsonlTraceStore(tmp_path / "traces.jsonl", max_bytes=1, archive_dir=archives, max_archives=2)
    for i in range(4):
        store.append(trace(task=f"t{i}"))
    mine = sorted(archives.glob("traces-*.jsonl.gz"))
    assert len(mine) == 2 and len(list(archives.glob("other-*.jsonl.gz"))) == 1
    assert all(fmt.archive_re("traces", ".jsonl").match(p.name) for p in mine)
    with gzip.open(mine[-1], "rt", encoding="utf-8") as f:
        assert [json.loads(line)["task"] for line in f] == ["t2"]
    assert [t["task"] for t in store.load()] == ["t3"]
    assert store.rotate().name.endswith(".jsonl.gz") and store.rotate(force=True) is None  # past max_bytes; empty
    assert store.store.stats("a").n == 4  # aggregates outlive rotation
    default = JsonlTraceStore(tmp_path / "d" / "traces.jsonl")
    default.append(trace())
    assert default.rotate(force=True).parent == tmp_path / "d" / "trace_archives"
    for s in (other, store, default):
        s.close()


def test_compact_keeps_the_newest_across_agents_as_the_seed(tmp_path):
    ours, theirs = JsonlTraceStore(tmp_path / "o.jsonl"), seed.JsonlTraceStore(tmp_path / "s.jsonl")
    for i in range(6):
        for s in (ours, theirs):
            s.append(trace("ab"[i % 3 == 0], f"t{i}"))
    with open(ours.path, "a") as f:
        f.write("{not json\n")
    assert ours.compact(3) == theirs.compact(3) == 3
    assert ours.load() == theirs.load() and ours.path.read_bytes() == theirs.path.read_bytes()
    assert ours.store.stats("a").n + ours.store.stats("b").n == 6  # statistics keep every call
    for bad in (0, -1, True):
        with pytest.raises(ValueError, match="at least 1"):
            ours.compact(bad)
    ours.close()


def test_the_seeds_value_errors(tmp_path):
    with pytest.raises(ValueError, match="max_bytes"):
        JsonlTraceStore(tmp_path / "t.jsonl", max_bytes=0)
    with pytest.raises(ValueError, match="max_archives"):
        JsonlTraceStore(tmp_path / "t.jsonl", max_archives=0)
    with pytest.raises(TypeError):
        JsonlTraceStore(tmp_path / "t.jsonl").append({"agent_id": "a", "bad": object()})
    with pytest.raises(ConfigError):
        JsonlStore(tmp_path, name="sub/calls.jsonl")
    with pytest.raises(ConfigError):
        JsonlStore(tmp_path, dialect="yaml")


def test_seed_lines_decode_naive_local_times_and_legacy_start_time():
    local = datetime(2026, 4, 25, 10, 0, 0)
    assert fmt.seed_record({"agent_id": "a", "timestamp": local.isoformat()}).ts == local.timestamp()
    assert fmt.seed_record({"agent_id": "a", "start_time": "2026-04-25T10:00:00Z"}).ts == 1777111200.0
    assert fmt.seed_record({"agent_id": "a", "timestamp": "soon"}).ts == 0.0
    record = fmt.seed_record({"agent_id": "a", "success": 1, "duration_sec": "slow", "error": {"code": 5}})
    assert (record.outcome, record.duration_s, record.error_message) == ("ok", 0.0, '{"code": 5}')
    assert fmt.parse_line(b'{"target": "a", "agent_id": "x"}') is None  # a sil line, and a bad one


# -- SQLiteTraceStore --------------------------------------------------------------------------
def test_a_seed_sqlite_file_is_imported_once_in_order(tmp_path):
    path = tmp_path / "traces.sqlite3"
    old = seed.SQLiteTraceStore(path)
    for i in range(3):
        old.append(trace(task=f"t{i}"))
    store = SQLiteTraceStore(path)
    assert store.imported == 3
    store.append(trace("b", "t3"))
    old.append(trace(task="t4"))  # a seed process still writing: imported at the next open
    again = SQLiteTraceStore(path)
    assert again.imported == 1 and SQLiteTraceStore(path).imported == 0
    assert [t["task"] for t in again.load()] == ["t0", "t1", "t2", "t3", "t4"]
    assert again.load() == [trace(task=f"t{i}") for i in range(3)] + [trace("b", "t3"), trace(task="t4")]
    assert [t["task"] for t in again.load(agent_id="b")] == ["t3"]
    assert [t["task"] for t in again.read(limit=2)] == ["t3", "t4"]
    assert again.store.stats("a").n == 4 and again.store.count_calls() == 5
    assert len(old.load()) == 4  # the seed's table is left as it was
    for s in (store, again):
        s.close()


def _open_sqlite(args):
    path, barrier = args
    barrier.wait()
    store = SQLiteTraceStore(path)
    store.close()
    return store.imported


def test_two_processes_opening_a_seed_file_at_once_import_it_once(tmp_path):
    path = tmp_path / "traces.sqlite3"
    old = seed.SQLiteTraceStore(path)
    for i in range(600):  # two import batches
        old.append(trace(task=f"t{i}"))
    ctx = multiprocessing.get_context("spawn")
    with ctx.Manager() as manager:
        barrier = manager.Barrier(3)
        with ctx.Pool(3) as pool:
            imported = pool.map(_open_sqlite, [(str(path), barrier)] * 3)
    assert sum(imported) >= 600
    store = SQLiteTraceStore(path)
    assert [t["task"] for t in store.load()] == [f"t{i}" for i in range(600)]
    assert store.store.stats("a").n == 600 and store.imported == 0
    store.close()


def test_sqlite_read_filters_since(tmp_path):
    store = SQLiteTraceStore(tmp_path / "t.db")
    for i in range(5):
        store.append(trace(task=f"t{i}", timestamp=f"2026-04-25T10:00:0{i}"))
    since = datetime(2026, 4, 25, 10, 0, 3)
    assert [t["task"] for t in store.read(since=since)] == ["t3", "t4"]
    assert [t["task"] for t in store.read("a", since=since, limit=1)] == ["t4"]
    store.close()


# -- AutoRollback ------------------------------------------------------------------------------
@pytest.mark.parametrize("before, after", [(0.8, 0.7), (0.9, 0.8), (1.0, 0.9), (0.3, 0.2), (0.7, 0.6), (0.6, 0.5)])
def test_a_drop_of_exactly_ten_points_never_fires(tmp_path, before, after):
    rollback = AutoRollback(tmp_path)
    assert rollback.should_rollback("a", "i", {"success_rate": before}, {"success_rate": after}) == (False, "")
    assert rollback.should_rollback("a", "i", {"success_rate": before}, {"success_rate": after - 0.001})[0] is True


@pytest.mark.parametrize("before, after", [(1.0, 1.2), (0.5, 0.6), (3.0, 3.6), (0.1, 0.12)])
def test_a_latency_rise_of_exactly_twenty_percent_never_fires(tmp_path, before, after):
    rollback = AutoRollback(tmp_path)
    assert rollback.should_rollback("a", "i", {"avg_duration_sec": before}, {"avg_duration_sec": after}) == (False, "")
    assert rollback.should_rollback("a", "i", {"avg_duration_sec": before}, {"avg_duration_sec": after * 1.01})[0]


def test_point_rule_reasons_are_english(tmp_path):
    rollback = AutoRollback(tmp_path)
    base = {"success_rate": 0.9, "avg_duration_sec": 1.0, "consecutive_failures": 0}
    assert rollback.should_rollback("a", "i", base, {**base, "success_rate": 0.7}) == (
        True, "success rate fell 20.0 points (90.0% -> 70.0%)")
    assert rollback.should_rollback("a", "i", base, {**base, "avg_duration_sec": 1.3}) == (
        True, "average latency rose 30.0% (1.00s -> 1.30s)")
    assert rollback.should_rollback("a", "i", base, {**base, "consecutive_failures": 5}) == (True, "5 consecutive failures")
    assert rollback.should_rollback("a", "i", {}, {"success_rate": None}) == (False, "")


def test_backups_and_rollbacks_live_in_a_verifiable_store(tmp_path):
    rollback = AutoRollback(tmp_path)
    ids = [rollback.backup_config("a", {"timeout": 30}, "imp-1") for _ in range(50)]  # all in the same second
    assert len(set(ids)) == 50
    b = rollback.backup_config("a", {"timeout": 45}, "imp-2")
    result = rollback.rollback("a", ids[0], reason="latency")
    assert result == {"success": True, "backup_id": ids[0], "improvement_id": "imp-1", "config": {"timeout": 30},
                      "restore_applied": False}
    assert rollback.rollback("b", b)["success"] is False  # another agent's backup
    assert "Backup not found" in rollback.rollback("a", "nope")["error"]
    [entry] = rollback.get_rollback_history("a")
    assert entry["backup_id"] == ids[0] and entry["config_restored"] == {"timeout": 30} and entry["reason"] == "latency"
    assert rollback.get_rollback_history("b") == []
    assert rollback.get_stats() == {"total_rollbacks": 1, "agents_rolled_back": 1, "agents": ["a"]}
    rollback.close()
    reopened = AutoRollback(tmp_path)
    assert reopened.get_rollback_history() == [entry]
    store = JsonlStore(tmp_path)
    assert verify_trail(store).ok and [e["type"] for e in store.trail_read()][-2:] == ["config_backup", "rollback_recorded"]
    # a backup's config edited on disk is refused, and an edited trail no longer verifies
    state = json.loads((tmp_path / "state.json").read_text())
    key = next(k for k, row in state["version"].items() if row["value"]["config"] == {"timeout": 45})
    state["version"][key]["value"]["config"] = {"timeout": 1}
    (tmp_path / "state.json").write_text(json.dumps(state))
    assert "no longer matches" in reopened.rollback("a", b)["error"]
    (tmp_path / "trail.jsonl").write_text((tmp_path / "trail.jsonl").read_text().replace('"imp-1"', '"imp-9"'))
    assert not verify_trail(store).ok
    store.close()
    reopened.close()


def test_the_default_folder_is_the_seeds(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    rollback = AutoRollback()
    assert rollback.data_dir == tmp_path / ".self-improving-loop" / "rollback"
    rollback.backup_config("a", {"x": 1}, "i")
    assert (rollback.data_dir / "trail.jsonl").exists()
    rollback.close()


def test_the_seeds_own_rollback_files_are_read(tmp_path):
    old = seed.AutoRollback(str(tmp_path))
    backup = old.backup_config("a", {"x": 1}, "imp-old")
    old.rollback("a", backup)
    ours = AutoRollback(tmp_path)
    [entry] = ours.get_rollback_history("a")
    assert entry["backup_id"] == backup and entry["reason"] == "" and entry["config_restored"] == {"x": 1}
    result = ours.rollback("a", backup)
    assert result["success"] is True and result["config"] == {"x": 1} and result["improvement_id"] == "imp-old"
    assert len(ours.get_rollback_history("a")) == 2 and ours.get_rollback_history("a")[1]["config_restored"] == {"x": 1}
    assert len(old.get_rollback_history("a")) == 1  # the seed's files are never written
    ours.close()


def test_the_loops_auto_rollback_records_into_the_guards_store(tmp_path):
    adapter = DictConfigAdapter({"writer": {"prompt": "good"}})
    loop = SelfImprovingLoop(data_dir=str(tmp_path), storage="sqlite", config_adapter=adapter,
                             notifier=seed.TelegramNotifier(enabled=False), policy=RolloutPolicy(min_calls=20))
    backup = loop.auto_rollback.backup_config("writer", {"prompt": "good"}, "manual-1")
    assert loop.auto_rollback.rollback("writer", backup, reason="operator")["config"] == {"prompt": "good"}
    [entry] = loop.auto_rollback.get_rollback_history("writer")
    assert entry["reason"] == "operator" and entry["improvement_id"] == "manual-1"
    assert loop.get_improvement_stats("writer")["rollback_count"] == 1
    assert loop.guard.verify_trail().ok
    assert not (tmp_path / "trail.jsonl").exists()  # nothing beside the Guard's store
    loop.close()


def test_missing_parent_folders_are_created_as_the_seed_did(tmp_path):
    deep = tmp_path / "a" / "b"
    for store in (JsonlTraceStore(deep / "j" / "traces.jsonl"), SQLiteTraceStore(deep / "s" / "traces.sqlite3"),
                  AutoRollback(deep / "rollback")):
        store.close()
    assert sorted(os.listdir(deep)) == ["j", "rollback", "s"]


@pytest.mark.parametrize("tail", [b"", b"torn", b"\n"])
def test_iter_lines_at_every_chunk_size(tmp_path, tail):
    data = b"".join(json.dumps({"i": i, "pad": "x" * (i * 3)}).encode() + b"\n" for i in range(12)) + b"\n" + tail
    lines = data.split(b"\n")[:-1]  # what follows the last newline is a torn line, or nothing
    (tmp_path / "f").write_bytes(data)
    fd = os.open(tmp_path / "f", os.O_RDONLY)
    try:
        for chunk in (1, 2, 7, 64, 1 << 16):
            assert list(fmt.iter_lines(fd, len(data), chunk=chunk)) == lines
            assert list(fmt.iter_lines(fd, len(data), reverse=True, chunk=chunk)) == lines[::-1]
    finally:
        os.close(fd)
