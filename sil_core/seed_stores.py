"""The seed's standalone classes (``self-improving-loop`` 0.1.x) as thin layers on sil stores.

* :class:`JsonlTraceStore` keeps the seed's ``traces.jsonl`` in the seed's line format, on
  a :class:`~sil_core.store.jsonl.JsonlStore` of that file name and the seed dialect: the
  cross-process lock (the seed's ``traces.jsonl.lock``), torn-line repair, gzip rotation
  and aggregates come from the store.
* :class:`SQLiteTraceStore` keeps traces in the sil tables of a
  :class:`~sil_core.store.sqlite.SqliteStore`; the seed's own ``traces`` table in the same
  file is imported once when the file is opened.
* :class:`AutoRollback` keeps config backups as config versions and backups and rollbacks
  as trail events of a store (a ``JsonlStore`` in its folder, or a Guard's store), so its
  history is hash-chained like every other decision.

A seed trace read from either store is the dict its writer gave, unchanged; as a call
record, its context is that whole dict.
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
from contextlib import closing
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from ._internal.ids import new_id
from .errors import StoreError
from .records import CallRecord
from .store._jsonl_format import SEED_ID, seed_record, seed_view
from .store.base import Store
from .store.jsonl import JsonlStore
from .store.sqlite import SqliteStore
from .trail import append_event
from .versions import config_version, get_version, put_version

if TYPE_CHECKING:
    from .guard import Guard

__all__ = ("AutoRollback", "JsonlTraceStore", "SQLiteTraceStore")

#: trail event types of :class:`AutoRollback` (recorded by the caller, not run by a Guard)
CONFIG_BACKUP = "config_backup"
ROLLBACK_RECORDED = "rollback_recorded"
#: the seed's own files in an AutoRollback folder, read (never written) for its old entries
LEGACY_BACKUPS = "config_backups.jsonl"
LEGACY_HISTORY = "rollback_history.jsonl"
#: how many rows of the seed's SQLite table are imported per transaction
IMPORT_BATCH = 500
_SQL_COLUMNS = ("id", "target", "ts", "duration_s", "outcome", "error_type", "error_message", "version", "arm",
                "attempt", "score", "context", "feedback_success", "feedback_score")


def _since(since: float | datetime | None) -> float | None:
    """Epoch seconds of a ``since`` bound (a naive datetime is local time, as in the seed)."""
    if since is None:
        return None
    if isinstance(since, datetime):
        return since.timestamp()
    if isinstance(since, bool) or not isinstance(since, (int, float)):
        raise TypeError(f"since must be epoch seconds or a datetime, not {since!r}")
    return float(since)


def _limit(limit: int | None) -> int | None:
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise ValueError(f"limit must be an int >= 0 or None, not {limit!r}")
    return limit


def _new_trace(trace: dict) -> CallRecord:
    if not isinstance(trace, dict):
        raise TypeError(f"a trace is a dict, not {type(trace).__name__}")
    return seed_record(trace, SEED_ID + new_id())


# -- JSONL -------------------------------------------------------------------------------------
class JsonlTraceStore:
    """The seed's append-only ``traces.jsonl``: one seed trace dict per line, as the caller
    gave it, on a :class:`~sil_core.store.jsonl.JsonlStore` (``self.store``) of that file.

    Seed tools and existing files keep working; ``JsonlStore(path.parent,
    name=path.name)`` (or ``Guard(trace_store.store)``) reads the same data with
    aggregates. Unlike the seed: a torn last line is never glued to the next append, the
    rotated file is gzipped after the lock is released, and a line that is not a trace
    (no ``agent_id``) is skipped like a corrupt one.

    Raises:
        ValueError: ``max_bytes <= 0`` or ``max_archives < 1``, as the seed.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        max_bytes: int | None = None,
        archive_dir: str | os.PathLike | None = None,
        max_archives: int = 5,
    ) -> None:
        if max_bytes is not None and max_bytes <= 0:
            raise ValueError("max_bytes must be a positive integer")
        if max_archives < 1:
            raise ValueError("max_archives must be at least 1")
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.max_archives = max_archives
        self.archive_dir = Path(archive_dir) if archive_dir is not None else self.path.parent / "trace_archives"
        self.path.parent.mkdir(parents=True, exist_ok=True)  # as the seed did
        self.store = JsonlStore(self.path.parent, name=self.path.name, dialect="seed", max_bytes=max_bytes,
                                archive_dir=self.archive_dir, max_archives=max_archives)
        self.lock_path = self.store.lock_path
        if not self.store.aggregates_path.exists() and (
                (self.path.exists() and self.path.stat().st_size) or self.store.archives(pending=True)):
            self.store.rebuild_aggregates()  # files the seed wrote: count what they hold, once

    def append(self, trace: dict) -> None:
        """Append one trace (durable on return); raises TypeError, as the seed, on a trace
        JSON cannot hold."""
        self.store.write([_new_trace(trace)])

    def load(self, agent_id: str | None = None) -> list[dict]:
        """Every trace of the active file (one agent's, or all), in file order."""
        return self.read(agent_id)

    def read(self, agent_id: str | None = None, *, since: float | datetime | None = None,
             limit: int | None = None) -> list[dict]:
        """The last ``limit`` traces of the active file at or after ``since`` (epoch seconds
        or a datetime), oldest first; with a ``limit`` the file is read backwards and only
        as far as needed."""
        limit, after = _limit(limit), _since(since)
        if limit == 0:
            return []
        out: list[dict] = []
        records: Iterator[CallRecord] = self.store.iter_records(reverse=limit is not None)
        try:
            for record in records:
                if after is not None and record.ts < after:
                    continue
                trace = seed_view(record)
                if agent_id is None or trace.get("agent_id") == agent_id:
                    out.append(trace)
                    if limit is not None and len(out) >= limit:
                        break
        finally:
            records.close()
        return out[::-1] if limit is not None else out

    def rotate(self, force: bool = False) -> Path | None:
        """Gzip the active file into the archive folder if it is past ``max_bytes`` (or is
        not empty, with ``force``); returns the archive, or ``None``."""
        return self.store.rotate(force)

    def compact(self, max_entries: int) -> int:
        """Keep the last ``max_entries`` valid traces of the active file, whatever their agent
        (the seed's semantics); corrupt lines are dropped. Returns how many were removed."""
        if isinstance(max_entries, bool) or not isinstance(max_entries, int) or max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        return self.store.compact(max_entries, per_target=False)

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> "JsonlTraceStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- SQLite ------------------------------------------------------------------------------------
class SQLiteTraceStore:
    """The seed's SQLite trace store on a :class:`~sil_core.store.sqlite.SqliteStore`
    (``self.store``, the sil tables) in the same file.

    A file the seed wrote has a ``traces(id, agent_id, timestamp, payload)`` table: its rows
    are imported into the sil tables when the file is opened, once (ids ``seed:traces:<id>``,
    which the store never stores twice, and a high-water mark), so :meth:`load` returns old
    and new traces in insertion order. The seed's table is left as it was.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)  # as the seed did
        self.store = SqliteStore(self.path)
        #: rows of the seed's table this open imported (0 when there was nothing new)
        self.imported = self._import_seed_table()

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(str(self.path), timeout=30)
        conn.execute("PRAGMA busy_timeout=30000")
        return conn

    def _import_seed_table(self) -> int:
        """Import the seed table's rows past the high-water mark (``kind="seed_import"``)."""
        with closing(self._connect()) as conn:
            columns = {row[1] for row in conn.execute("PRAGMA table_info(traces)")}
            if not {"id", "payload"} <= columns:
                return 0
            mark = self.store.kv_get("seed_import", "traces")
            last = mark[0]["rowid"] if mark else 0
            count = 0
            while True:
                rows = conn.execute("SELECT id, payload FROM traces WHERE id > ? ORDER BY id LIMIT ?",
                                    (last, IMPORT_BATCH)).fetchall()
                if not rows:
                    return count
                batch = []
                for rowid, payload in rows:
                    try:
                        trace = json.loads(payload)
                    except (TypeError, ValueError):
                        continue  # the seed's load skipped such rows too
                    if isinstance(trace, dict):
                        batch.append(seed_record(trace, f"{SEED_ID}traces:{rowid}"))
                self.store.write(batch)  # ids already stored (another process's import) are skipped
                last = rows[-1][0]
                self._mark(last)
                count += len(batch)

    def _mark(self, rowid: int) -> None:
        while True:
            row = self.store.kv_get("seed_import", "traces")
            if row is not None and row[0]["rowid"] >= rowid:
                return
            if self.store.kv_put("seed_import", "traces", {"rowid": rowid}, expect_rev=row[1] if row else 0):
                return

    def append(self, trace: dict) -> None:
        """Append one trace in one transaction."""
        self.store.write([_new_trace(trace)])

    def load(self, agent_id: str | None = None) -> list[dict]:
        """Every trace (one agent's, or all), in insertion order."""
        return self.read(agent_id)

    def read(self, agent_id: str | None = None, *, since: float | datetime | None = None,
             limit: int | None = None) -> list[dict]:
        """The last ``limit`` traces at or after ``since`` (epoch seconds or a datetime),
        oldest first, in insertion order."""
        limit, after = _limit(limit), _since(since)
        if limit == 0:
            return []
        clauses, params = [], []
        if isinstance(agent_id, str):
            clauses.append("target = ?")
            params.append(agent_id)
        if after is not None:
            clauses.append("ts >= ?")
            params.append(after)
        sql = f"SELECT {', '.join(_SQL_COLUMNS)} FROM sil_calls"
        if clauses:
            sql += " WHERE " + " AND ".join(clauses)
        sql += " ORDER BY rowid DESC" if limit is not None else " ORDER BY rowid"
        out = []
        with closing(self._connect()) as conn:
            cursor = conn.execute(sql, params)
            for row in cursor:
                values = list(row)
                values[12] = None if values[12] is None else bool(values[12])
                trace = seed_view(CallRecord(*values))
                if agent_id is None or trace.get("agent_id") == agent_id:
                    out.append(trace)
                    if limit is not None and len(out) >= limit:
                        break
        return out[::-1] if limit is not None else out

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> "SQLiteTraceStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- rollback ----------------------------------------------------------------------------------
def _num(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) else 0.0


class AutoRollback:
    """The seed's rollback records: config backups, recorded rollbacks, their history.

    Standalone (``AutoRollback(data_dir)``), the records live in a
    :class:`~sil_core.store.jsonl.JsonlStore` in ``data_dir`` (default
    ``~/.self-improving-loop/rollback``): a backup's config is a config version
    (content-hashed, in ``state.json``), and each backup and rollback is an event of the
    hash-chained ``trail.jsonl`` (``sil trail verify --store jsonl:///<data_dir>``). With
    ``guard=`` (as ``SelfImprovingLoop.auto_rollback``) they go to the Guard's store, and
    the history also lists the Guard's own rollbacks. A seed's ``config_backups.jsonl`` and
    ``rollback_history.jsonl`` in ``data_dir`` are read, never written.
    """

    #: the seed's point rules for :meth:`should_rollback` (the Guard does not use them)
    SUCCESS_RATE_DROP_THRESHOLD = 0.10
    LATENCY_INCREASE_THRESHOLD = 0.20
    CONSECUTIVE_FAILURES_THRESHOLD = 5
    #: the seed's verification window (calls after a change); kept for code that reads it
    VERIFICATION_WINDOW = 10
    #: float tolerance: a drop of exactly 10 points is "not more than 10 points"
    EPSILON = 1e-9

    def __init__(self, data_dir: str | os.PathLike | None = None, *, guard: Guard | None = None) -> None:
        self._own = guard is None
        if guard is not None:
            self.store: Store = guard.store
            self.data_dir = Path(data_dir) if data_dir is not None else None
        else:
            self.data_dir = Path(data_dir) if data_dir is not None else Path.home() / ".self-improving-loop" / "rollback"
            self.data_dir.mkdir(parents=True, exist_ok=True)  # as the seed did
            self.store = JsonlStore(self.data_dir)

    # -- the seed's point rules -------------------------------------------------------------
    def should_rollback(self, agent_id: str, improvement_id: str, before_metrics: dict,
                        after_metrics: dict) -> tuple[bool, str]:
        """``(True, reason)`` when one of the seed's point rules fires on two metric dicts.

        These are the seed's rules, kept for code that calls them directly: the success
        rate fell more than 10 points, the average latency rose more than 20 %, or at least
        5 consecutive failures. A rule with no "before" value (0) does not fire. The Guard
        itself never uses them: it judges a change with sequential statistics on every
        call (see ``RolloutPolicy``), since two point estimates of ten calls each are
        mostly noise. Unlike the seed, a drop of exactly 10 points (or a rise of exactly
        20 %) never fires, whatever the float rounding, and the reason is in English.
        """
        before_rate, after_rate = _num(before_metrics.get("success_rate")), _num(after_metrics.get("success_rate"))
        if before_rate > 0 and before_rate - after_rate > self.SUCCESS_RATE_DROP_THRESHOLD + self.EPSILON:
            drop = (before_rate - after_rate) * 100
            return True, f"success rate fell {drop:.1f} points ({before_rate:.1%} -> {after_rate:.1%})"
        before_lat, after_lat = _num(before_metrics.get("avg_duration_sec")), _num(after_metrics.get("avg_duration_sec"))
        if before_lat > 0:
            rise = (after_lat - before_lat) / before_lat
            if rise > self.LATENCY_INCREASE_THRESHOLD + self.EPSILON:
                return True, f"average latency rose {rise:.1%} ({before_lat:.2f}s -> {after_lat:.2f}s)"
        failures = after_metrics.get("consecutive_failures") or 0
        if _num(failures) >= self.CONSECUTIVE_FAILURES_THRESHOLD:
            return True, f"{failures} consecutive failures"
        return False, ""

    # -- backups and rollbacks --------------------------------------------------------------
    def backup_config(self, agent_id: str, config: dict, improvement_id: str) -> str:
        """Store ``config`` as a version and record the backup; returns a unique backup id
        (``<agent_id>_<time-ordered id>``: the seed's one-per-second ids collided)."""
        version = put_version(self.store, agent_id, dict(config))
        backup_id = f"{agent_id}_{new_id()}"
        self._append(CONFIG_BACKUP, agent_id, backup_id, improvement_id=improvement_id, version=version)
        return backup_id

    def rollback(self, agent_id: str, backup_id: str, *, reason: str = "") -> dict[str, Any]:
        """Record a rollback of ``agent_id`` to a backup and return the config to restore.

        This records, it does not restore (as in the seed): apply ``result["config"]``
        yourself, or let a Guard with a ``ConfigAdapter`` roll back. Returns ``success``,
        ``backup_id``, ``improvement_id``, ``config`` and ``restore_applied: False``; or
        ``success: False`` and ``error`` for a backup this agent does not have, or whose
        stored config no longer matches its hash.
        """
        backup = self._find_backup(agent_id, backup_id)
        if backup is None:
            return {"success": False, "error": f"Backup not found: {backup_id} (agent {agent_id!r})"}
        config, version = backup["config"], backup["version"]
        if not isinstance(config, dict):
            return {"success": False, "error": f"backup {backup_id}: its config (version {version}) is missing"}
        if version is None:  # a backup of the seed's own file: keep its config as a version now
            version = put_version(self.store, agent_id, config)
        elif config_version(config) != version:
            return {"success": False, "error": f"backup {backup_id}: the stored config no longer matches version {version}"}
        try:
            self._append(ROLLBACK_RECORDED, agent_id, backup_id, improvement_id=backup["improvement_id"],
                         version=version, reason=reason)
        except (StoreError, OSError) as exc:
            return {"success": False, "error": str(exc)}
        return {"success": True, "backup_id": backup_id, "improvement_id": backup["improvement_id"], "config": config,
                "restore_applied": False}

    def _find_backup(self, agent_id: str, backup_id: str) -> dict[str, Any] | None:
        for event in self.store.trail_read(target=agent_id):
            if event.get("type") == CONFIG_BACKUP and event.get("change_id") == backup_id:
                data = event.get("data") or {}
                version = data.get("version")
                return {"improvement_id": data.get("improvement_id"), "version": version,
                        "config": get_version(self.store, agent_id, version) if isinstance(version, str) else None}
        for row in self._legacy(LEGACY_BACKUPS):
            if row.get("backup_id") == backup_id and row.get("agent_id") == agent_id:
                return {"improvement_id": row.get("improvement_id"), "version": None, "config": row.get("config")}
        return None

    def _append(self, type: str, target: str, change_id: str, **data: Any) -> dict[str, Any]:
        return append_event(self.store, type, target, change_id=change_id, actor="api", **data)

    def _legacy(self, name: str) -> list[dict]:
        """The rows of one of the seed's own files in ``data_dir`` (bad lines skipped)."""
        if self.data_dir is None:
            return []
        try:
            text = (self.data_dir / name).read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        rows = []
        for line in text.splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if isinstance(row, dict):
                rows.append(row)
        return rows

    # -- history -----------------------------------------------------------------------------
    def get_rollback_history(self, agent_id: str | None = None) -> list[dict[str, Any]]:
        """One entry per rollback, oldest first: ``rollback_id``, ``agent_id``, ``backup_id``,
        ``improvement_id``, ``timestamp``, ``config_restored``, ``reason`` (the seed's README
        promised ``reason``; its records had none). Lists the seed's old entries, the
        rollbacks recorded here, and the rollbacks a Guard completed on this store."""
        out = [{**row, "reason": row.get("reason", "")} for row in self._legacy(LEGACY_HISTORY)
               if agent_id is None or row.get("agent_id") == agent_id]
        events = self.store.trail_read(target=agent_id)
        started = {e["change_id"]: e for e in events if e.get("type") == "rollback_started"}
        for e in events:
            kind = e.get("type")
            if kind == "rollback_succeeded":
                verdict = (started.get(e["change_id"], {}).get("data") or {}).get("verdict") or {}
                row = self.store.kv_get("change", e["change_id"])
                out.append({
                    "rollback_id": f"rollback_{e['seq']}", "agent_id": e["target"], "backup_id": e["change_id"],
                    "improvement_id": e["change_id"], "timestamp": e["ts"],
                    "config_restored": row[0].get("backup") if row else None, "reason": verdict.get("reason", ""),
                })
            elif kind == ROLLBACK_RECORDED:
                data = e.get("data") or {}
                version = data.get("version")
                out.append({
                    "rollback_id": f"rollback_{e['seq']}", "agent_id": e["target"], "backup_id": e["change_id"],
                    "improvement_id": data.get("improvement_id"), "timestamp": e["ts"],
                    "config_restored": get_version(self.store, e["target"], version) if isinstance(version, str) else None,
                    "reason": data.get("reason", ""),
                })
        return out

    def get_stats(self) -> dict[str, Any]:
        """``total_rollbacks``, ``agents_rolled_back`` and ``agents`` (sorted)."""
        history = self.get_rollback_history()
        agents = sorted({h["agent_id"] for h in history})
        return {"total_rollbacks": len(history), "agents_rolled_back": len(agents), "agents": agents}

    def close(self) -> None:
        """Close the store this object opened (a Guard's store is the Guard's to close)."""
        if self._own:
            self.store.close()
