"""``sqlite:///file``: the embedded default store.

WAL journal, ``busy_timeout`` for other processes, one ``BEGIN IMMEDIATE`` transaction
per write batch (records, cell increments and feedback together), the schema of
:mod:`sil_core.store._schema` (indexes on ``(target, ts)``, ``(target, version)`` and
``ts``; per-metric moments in ``sil_metrics``, kept and pruned like the latency histogram
``sil_hist``), and retention by age or count. Any number of
processes on one host may share a file, and may open a file that does not exist yet at the
same instant: switching to WAL, creating the schema and migrating wait for each other and
retry within ``busy_timeout_s`` (SQLite answers some of these with "database is locked" at
once, without calling its busy handler).

Every wait for another process is bounded by ``busy_timeout_s`` (10 s by default, short
enough for a web request; a write that cannot get the file in time raises
:class:`~sil_core.errors.StoreError`, which the Guard's writer retries later).

Feedback for a call not stored yet waits in ``sil_pending_feedback`` (one row per call:
per field the value given last and when, and when it was received) and is folded into
the record in the batch that stores it. Rows received more than ``pending_max_age_s``
ago are never applied and are deleted when the store next keeps pending feedback, as are
the oldest beyond ``pending_max`` rows. Writers take the file's write lock up front, so a
record and its early feedback can never miss each other.
"""

from __future__ import annotations

import json
import os
import random
import sqlite3
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

from ..aggregates import ALL_TIME, BUCKET_S, FIELDS, Cell, CellKey, cells_for, feedback_delta
from ..errors import StoreError
from ..metrics import MOMENTS
from ..records import CallRecord, Feedback
from . import _schema
from ._common import (
    Judged, Pending, apply_feedback, dump_json, fold_pending, load_late_metrics, load_metrics, merge_cells,
    merge_pending, moments, pending_bounds,
)
from ._paths import prepare_folder
from .base import PENDING_MAX, PENDING_MAX_AGE_S, Store

__all__ = ("SqliteStore",)

CALL_COLUMNS = _schema.CALLS.column_names
_PENDING_COLS = ", ".join(_schema.PENDING.column_names)
_KEY = ", ".join(c.name for c in _schema.CELL_KEY)  # target, version, arm, hour
_CELL_COLS = ", ".join(FIELDS)
_CELL_UPSERT = (
    f"INSERT INTO {_schema.CELLS.name} ({_KEY}, {_CELL_COLS}) "
    f"VALUES (?, ?, ?, ?, {', '.join('?' for _ in FIELDS)}) "
    f"ON CONFLICT ({_KEY}) DO UPDATE SET "
    + ", ".join(f"{f} = {f} + excluded.{f}" for f in FIELDS)
)
_HIST_UPSERT = (
    f"INSERT INTO {_schema.HIST.name} ({', '.join(_schema.HIST.column_names)}) VALUES (?, ?, ?, ?, ?, ?) "
    f"ON CONFLICT ({_KEY}, bin) DO UPDATE SET n = n + excluded.n"
)
_METRIC_UPSERT = (
    f"INSERT INTO {_schema.METRICS.name} ({', '.join(_schema.METRICS.column_names)}) VALUES ({', '.join('?' * 11)}) "
    f"ON CONFLICT ({_KEY}, name) DO UPDATE SET " + ", ".join(f"{m} = {m} + excluded.{m}" for m in MOMENTS)
)


def _insert(columns: Sequence[str]) -> str:
    return f"INSERT INTO sil_calls ({', '.join(columns)}) VALUES ({', '.join('?' for _ in columns)})"


_INSERT_CALL = _insert(CALL_COLUMNS)
#: a batch without metrics leaves the last two columns (metrics, feedback_metrics) NULL: fewer to bind
_INSERT_PLAIN = _insert(CALL_COLUMNS[:-2])
_SELECT_CALL = f"SELECT {', '.join(CALL_COLUMNS)} FROM sil_calls"

_MOMENT_SUMS = ", ".join(f"SUM({m})" for m in MOMENTS)
_NO_MOMENTS = ", ".join("NULL" for _ in MOMENTS)

#: the cell columns of schema version 1 (later versions add columns by migration)
_V1_FIELDS = FIELDS[: FIELDS.index("score_sumsq") + 1]

#: append-only: each entry moves a store written by an earlier release one version up (a
#: new store is created from :mod:`._schema` at the last version). Never edit a released entry.
MIGRATIONS = (
    f"""
    CREATE TABLE sil_calls (
        id TEXT PRIMARY KEY, target TEXT NOT NULL, ts REAL NOT NULL, duration_s REAL NOT NULL,
        outcome TEXT NOT NULL, error_type TEXT, error_message TEXT, version TEXT, arm TEXT,
        attempt INTEGER NOT NULL DEFAULT 1, score REAL, context TEXT,
        feedback_success INTEGER, feedback_score REAL
    );
    CREATE INDEX sil_calls_target_ts ON sil_calls (target, ts);
    CREATE INDEX sil_calls_target_version ON sil_calls (target, version);
    CREATE TABLE sil_cells (
        target TEXT NOT NULL, version TEXT NOT NULL, arm TEXT NOT NULL, hour INTEGER NOT NULL,
        {", ".join(f"{f} {'REAL' if f.startswith(('lat_sum', 'score_sum')) else 'INTEGER'} NOT NULL DEFAULT 0" for f in _V1_FIELDS)},
        PRIMARY KEY (target, hour, version, arm)
    );
    CREATE TABLE sil_hist (
        target TEXT NOT NULL, version TEXT NOT NULL, arm TEXT NOT NULL, hour INTEGER NOT NULL,
        bin INTEGER NOT NULL, n INTEGER NOT NULL,
        PRIMARY KEY (target, hour, version, arm, bin)
    );
    CREATE TABLE sil_state (
        kind TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL, rev INTEGER NOT NULL,
        PRIMARY KEY (kind, key)
    );
    CREATE TABLE sil_trail (
        seq INTEGER PRIMARY KEY, target TEXT, hash TEXT NOT NULL, event TEXT NOT NULL
    );
    CREATE INDEX sil_trail_target ON sil_trail (target, seq);
    """,
    "ALTER TABLE sil_cells ADD COLUMN n_retried INTEGER NOT NULL DEFAULT 0",
    """
    ALTER TABLE sil_calls ADD COLUMN feedback_success_ts REAL;
    ALTER TABLE sil_calls ADD COLUMN feedback_score_ts REAL;
    CREATE TABLE sil_pending_feedback (
        call_id TEXT PRIMARY KEY, success INTEGER, success_ts REAL, score REAL, score_ts REAL,
        received REAL NOT NULL
    );
    CREATE INDEX sil_pending_feedback_received ON sil_pending_feedback (received)
    """,
    # the index PostgreSQL always had: retain(max_age_s=...) and read_calls() of every target
    "CREATE INDEX IF NOT EXISTS sil_calls_ts ON sil_calls (ts)",
    # metrics: the calls' own and late values (JSON), pending late values, per-metric moments
    """
    ALTER TABLE sil_calls ADD COLUMN metrics TEXT;
    ALTER TABLE sil_calls ADD COLUMN feedback_metrics TEXT;
    ALTER TABLE sil_pending_feedback ADD COLUMN metrics TEXT;
    CREATE TABLE sil_metrics (
        target TEXT NOT NULL, version TEXT NOT NULL, arm TEXT NOT NULL, hour INTEGER NOT NULL, name TEXT NOT NULL,
        n INTEGER NOT NULL DEFAULT 0, sum REAL NOT NULL DEFAULT 0, sumsq REAL NOT NULL DEFAULT 0,
        log_n INTEGER NOT NULL DEFAULT 0, log_sum REAL NOT NULL DEFAULT 0, log_sumsq REAL NOT NULL DEFAULT 0,
        PRIMARY KEY (target, hour, version, arm, name)
    )
    """,
)
_LOCKED = ("locked", "busy")


def row_to_record(row: Sequence) -> CallRecord:
    values = list(row)
    fb = values[12]
    values[12] = None if fb is None else bool(fb)
    if values[16] is not None:
        values[16] = load_metrics(values[16])
    if values[17] is not None:
        values[17] = load_late_metrics(values[17])
    return CallRecord(*values)


def record_to_row(r: CallRecord, metrics: bool = True) -> tuple:
    """The ``sil_calls`` row of a record (without its two metric columns unless ``metrics``)."""
    row = (
        r.id, r.target, r.ts, r.duration_s, r.outcome, r.error_type, r.error_message, r.version,
        r.arm, r.attempt, r.score, r.context,
        None if r.feedback_success is None else int(r.feedback_success), r.feedback_score,
        r.feedback_success_ts, r.feedback_score_ts,
    )
    return (*row, dump_json(r.metrics), dump_json(r.feedback_metrics)) if metrics else row


def _row_to_pending(row: Sequence) -> Pending:
    cid, success, success_ts, score, score_ts, received, metrics = row
    return Pending(cid, None if success is None else bool(success), success_ts, score, score_ts, received,
                   load_late_metrics(metrics) if metrics is not None else None)


def _chunks(items: Sequence, size: int = 500) -> Iterator[Sequence]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


class SqliteStore(Store):
    """An embedded SQLite file shared by every thread and process that opens it."""

    capabilities = frozenset({"retention", "multiprocess"})

    def __init__(self, path: str | Path, *, busy_timeout_s: float = 10.0, synchronous: str = "NORMAL",
                 pending_max_age_s: float = PENDING_MAX_AGE_S, pending_max: int = PENDING_MAX) -> None:
        """``busy_timeout_s`` bounds every wait for another process's lock (raises
        :class:`StoreError` when it expires); ``pending_max_age_s``/``pending_max`` bound
        the feedback kept for calls not stored yet."""
        self.pending_max_age_s, self.pending_max = pending_bounds(pending_max_age_s, pending_max)
        self.path = Path(path)
        self.url = f"sqlite:///{self.path}"
        prepare_folder(self.path.parent, self.url)
        self._lock = threading.Lock()
        self._busy_timeout_s = busy_timeout_s
        self._synchronous = synchronous
        self._conn: sqlite3.Connection | None = None
        self._retry_locked(self._open)

    def _retry_locked(self, fn) -> None:
        """Run ``fn``, retrying with jittered backoff while another process holds the file
        (a fresh file opened by many processes at once), for at most ``busy_timeout_s``."""
        deadline = time.monotonic() + self._busy_timeout_s
        delay = 0.005
        while True:
            try:
                with self._errors():
                    return fn()
            except StoreError as exc:
                cause = exc.__cause__
                locked = isinstance(cause, sqlite3.OperationalError) and any(w in str(cause).lower() for w in _LOCKED)
                if not locked or time.monotonic() + delay > deadline:
                    raise
            time.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 0.25)

    def _open(self) -> None:
        if self._conn is None or self._pid != os.getpid():
            self._connect()
        self._migrate()

    def _connect(self) -> None:
        with self._errors():
            conn = sqlite3.connect(
                str(self.path), timeout=self._busy_timeout_s, isolation_level=None, check_same_thread=False
            )
            try:
                conn.execute(f"PRAGMA busy_timeout={int(self._busy_timeout_s * 1000)}")
                conn.execute("PRAGMA journal_mode=WAL")
                # NORMAL in WAL mode: a commit survives a process crash; FULL also survives power loss
                conn.execute(f"PRAGMA synchronous={self._synchronous}")
            except BaseException:
                conn.close()
                raise
        self._conn = conn
        self._pid = os.getpid()

    def _connection(self) -> sqlite3.Connection:
        """This process's connection: a forked child opens its own (SQLite connections
        must not cross a fork)."""
        if self._pid != os.getpid():
            self._lock = threading.Lock()
            self._connect()
        return self._conn

    @contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as exc:
            raise StoreError(f"{self.url}: {exc}") from exc

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, taken up front so concurrent writers queue on busy_timeout."""
        conn = self._connection()
        with self._lock, self._errors():
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def _schema_version(self) -> int:
        conn = self._connection()
        with self._lock:
            try:
                row = conn.execute("SELECT version FROM sil_schema_version").fetchone()
            except sqlite3.OperationalError as exc:
                if "no such table" in str(exc):
                    return 0
                raise
        return row[0] if row else 0

    def _migrate(self) -> None:
        if self._schema_version() >= len(MIGRATIONS):
            return  # the common case: no write lock taken to open a store
        with self._tx() as conn:
            conn.execute("CREATE TABLE IF NOT EXISTS sil_schema_version (version INTEGER NOT NULL)")
            row = conn.execute("SELECT version FROM sil_schema_version").fetchone()
            current = row[0] if row else 0
            if current == 0 and conn.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (_schema.CALLS.name,)
            ).fetchone() is None:  # a new store: the current schema at once
                for statement in _schema.create_statements("sqlite"):
                    conn.execute(statement)
                number = len(MIGRATIONS)
                if row is None:
                    conn.execute("INSERT INTO sil_schema_version VALUES (?)", (number,))
                else:
                    conn.execute("UPDATE sil_schema_version SET version = ?", (number,))
                return
            for number, script in enumerate(MIGRATIONS[current:], start=current + 1):
                for statement in filter(str.strip, script.split(";")):
                    conn.execute(statement)
                if row is None:
                    conn.execute("INSERT INTO sil_schema_version VALUES (?)", (number,))
                    row = (number,)
                else:
                    conn.execute("UPDATE sil_schema_version SET version = ?", (number,))

    # -- writes ----------------------------------------------------------------------------
    def write(self, calls: Sequence[CallRecord], feedback: Sequence[Feedback] = ()) -> list[CallRecord]:
        if not calls and not feedback:
            return []
        now = time.time()
        with self._tx() as conn:
            return self._write(conn, calls, feedback, now)

    def _write(self, conn: sqlite3.Connection, calls: Sequence[CallRecord], feedback: Sequence[Feedback],
               now: float) -> list[CallRecord]:
        judged = Judged()
        cutoff = now - self.pending_max_age_s
        fresh = self._new_calls(conn, calls)
        for r in fresh:
            judged.known(r)
        if fresh and conn.execute("SELECT EXISTS (SELECT 1 FROM sil_pending_feedback)").fetchone()[0]:
            waiting = self._take_pending(conn, [r.id for r in fresh], cutoff)
            if waiting:
                fresh = [fold_pending(r, waiting.get(r.id)) for r in fresh]
                for r in fresh:
                    if r.id in waiting:
                        judged.now(r)
        if fresh:
            metered = any(r.metrics or r.feedback_metrics for r in fresh)
            conn.executemany(_INSERT_CALL if metered else _INSERT_PLAIN, [record_to_row(r, metered) for r in fresh])
        deltas = cells_for(fresh)
        if feedback:
            ids = list(dict.fromkeys(fb.call_id for fb in feedback))
            stored = self._load_calls(conn, ids)
            states = dict(stored)
            missing = [cid for cid in ids if cid not in stored]
            pending = self._load_pending(conn, missing, cutoff) if missing else {}
            touched: set[str] = set()
            for fb in feedback:
                before = states.get(fb.call_id)
                if before is None:
                    pending[fb.call_id] = merge_pending(pending.get(fb.call_id), fb, now)
                    touched.add(fb.call_id)
                    continue
                judged.known(before)
                after = apply_feedback(before, fb, now)
                if after is not before:
                    states[fb.call_id] = after
                    judged.now(after)
                    merge_cells(deltas, feedback_delta(before, after))
            updates = [r for cid, r in states.items() if r is not stored[cid]]
            if updates:
                conn.executemany(
                    "UPDATE sil_calls SET feedback_success = ?, feedback_score = ?, feedback_success_ts = ?, "
                    "feedback_score_ts = ?, feedback_metrics = ? WHERE id = ?",
                    [(None if r.feedback_success is None else int(r.feedback_success), r.feedback_score,
                      r.feedback_success_ts, r.feedback_score_ts, dump_json(r.feedback_metrics), r.id)
                     for r in updates],
                )
            if touched:
                self._keep_pending(conn, [pending[cid] for cid in touched], cutoff)
        self._upsert_cells(conn, deltas)
        return judged.changed()

    @staticmethod
    def _load_calls(conn: sqlite3.Connection, ids: Sequence[str]) -> dict[str, CallRecord]:
        out: dict[str, CallRecord] = {}
        for chunk in _chunks(ids):
            for row in conn.execute(f"{_SELECT_CALL} WHERE id IN ({', '.join('?' for _ in chunk)})", chunk):
                out[row[0]] = row_to_record(row)
        return out

    @staticmethod
    def _load_pending(conn: sqlite3.Connection, ids: Sequence[str], cutoff: float) -> dict[str, Pending]:
        """The pending feedback of these calls, received since ``cutoff`` (older is void)."""
        out: dict[str, Pending] = {}
        for chunk in _chunks(ids):
            for row in conn.execute(
                f"SELECT {_PENDING_COLS} FROM sil_pending_feedback "
                f"WHERE received >= ? AND call_id IN ({', '.join('?' for _ in chunk)})", [cutoff, *chunk]
            ):
                out[row[0]] = _row_to_pending(row)
        return out

    def _take_pending(self, conn: sqlite3.Connection, ids: Sequence[str], cutoff: float) -> dict[str, Pending]:
        """Remove and return the pending feedback of calls being stored now."""
        found = self._load_pending(conn, ids, cutoff)
        for chunk in _chunks(ids):
            conn.execute(f"DELETE FROM sil_pending_feedback WHERE call_id IN ({', '.join('?' for _ in chunk)})", chunk)
        return found

    def _keep_pending(self, conn: sqlite3.Connection, entries: list[Pending], cutoff: float) -> None:
        """Store merged pending entries, then prune: rows received before ``cutoff``, and
        the oldest received beyond ``pending_max``."""
        conn.executemany(
            f"INSERT INTO sil_pending_feedback ({_PENDING_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (call_id) DO UPDATE SET success = excluded.success, success_ts = excluded.success_ts, "
            "score = excluded.score, score_ts = excluded.score_ts, received = excluded.received, "
            "metrics = excluded.metrics",
            [(p.call_id, None if p.success is None else int(p.success), p.success_ts, p.score, p.score_ts,
              p.received, dump_json(p.metrics)) for p in entries],
        )
        conn.execute("DELETE FROM sil_pending_feedback WHERE received < ?", (cutoff,))
        conn.execute(
            "DELETE FROM sil_pending_feedback WHERE call_id IN (SELECT call_id FROM sil_pending_feedback "
            "ORDER BY received DESC, call_id DESC LIMIT -1 OFFSET ?)", (self.pending_max,),
        )

    @staticmethod
    def _new_calls(conn: sqlite3.Connection, calls: Sequence[CallRecord]) -> list[CallRecord]:
        """The calls of a batch not stored yet (a retried batch must not count twice)."""
        unique = list({r.id: r for r in calls}.values())
        existing: set[str] = set()
        for i in range(0, len(unique), 500):
            chunk = [r.id for r in unique[i : i + 500]]
            existing.update(row[0] for row in conn.execute(
                f"SELECT id FROM sil_calls WHERE id IN ({', '.join('?' for _ in chunk)})", chunk
            ))
        return [r for r in unique if r.id not in existing] if existing else unique

    @staticmethod
    def _upsert_cells(conn: sqlite3.Connection, deltas: dict[CellKey, Cell]) -> None:
        if not deltas:
            return
        conn.executemany(_CELL_UPSERT, [(*key, *cell.values()) for key, cell in deltas.items()])
        hist_rows = [(*key, b, n) for key, cell in deltas.items() for b, n in cell.hist.items() if n]
        if hist_rows:
            conn.executemany(_HIST_UPSERT, hist_rows)
        metric_rows = [(*key, name, *m) for key, cell in deltas.items() if cell.metrics
                       for name, m in cell.metrics.items() if any(m)]
        if metric_rows:
            conn.executemany(_METRIC_UPSERT, metric_rows)

    # -- reads -----------------------------------------------------------------------------
    def _query(self, sql: str, params: Sequence = ()) -> list:
        conn = self._connection()
        with self._lock, self._errors():
            return conn.execute(sql, params).fetchall()

    def cells(self, target: str, *, version: str | None = None, since_hour: int | None = None,
              hist: bool = True) -> dict[tuple[str, str], Cell]:
        where, params = "target = ?", [target]
        if version is not None:
            where += " AND version = ?"
            params.append(version)
        if since_hour is None:
            where += " AND hour = ?"
            params.append(ALL_TIME)
        else:
            where += " AND hour >= ?"
            params.append(since_hour)
        sums = ", ".join(f"SUM({f})" for f in FIELDS)
        pad = ", ".join("NULL" for _ in FIELDS)
        # one statement, so cells and metrics come from the same snapshot
        out: dict[tuple[str, str], Cell] = {}
        metrics: list[tuple] = []
        for row in self._query(
            f"SELECT version, arm, NULL, {sums}, {_NO_MOMENTS} FROM sil_cells WHERE {where} GROUP BY version, arm "
            f"UNION ALL SELECT version, arm, name, {pad}, {_MOMENT_SUMS} FROM sil_metrics WHERE {where} "
            f"GROUP BY version, arm, name", params + params
        ):
            if row[2] is None:
                out[(row[0], row[1])] = Cell.from_values(row[3 : 3 + len(FIELDS)])
            else:
                metrics.append(row)
        for row in metrics:
            cell, m = out.get((row[0], row[1])), moments(row[3 + len(FIELDS):])
            if cell is not None and m is not None:
                cell.metrics[row[2]] = m
        if not hist:
            return out
        for v, a, b, n in self._query(
            f"SELECT version, arm, bin, SUM(n) FROM sil_hist WHERE {where} GROUP BY version, arm, bin", params
        ):
            if n and (v, a) in out:
                out[(v, a)].hist[b] = n
        return out

    def read_calls(self, target=None, *, since=None, until=None, version=None, limit=1000) -> list[CallRecord]:
        clauses, params = [], []
        for clause, value in (("target = ?", target), ("ts >= ?", since), ("ts < ?", until), ("version = ?", version)):
            if value is not None:
                clauses.append(clause)
                params.append(value)
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = self._query(f"{_SELECT_CALL}{where} ORDER BY ts DESC, id DESC LIMIT ?", [*params, int(limit)])
        return [row_to_record(r) for r in reversed(rows)]

    def get_call(self, call_id: str) -> CallRecord | None:
        rows = self._query(_SELECT_CALL + " WHERE id = ?", (call_id,))
        return row_to_record(rows[0]) if rows else None

    def targets(self) -> list[str]:
        return [r[0] for r in self._query("SELECT DISTINCT target FROM sil_cells WHERE hour = ? ORDER BY target", (ALL_TIME,))]

    def count_calls(self, target: str | None = None) -> int:
        if target is None:
            return self._query("SELECT COUNT(*) FROM sil_calls")[0][0]
        return self._query("SELECT COUNT(*) FROM sil_calls WHERE target = ?", (target,))[0][0]

    def kv_get(self, kind: str, key: str):
        rows = self._query("SELECT value, rev FROM sil_state WHERE kind = ? AND key = ?", (kind, key))
        return (json.loads(rows[0][0]), rows[0][1]) if rows else None

    def kv_put(self, kind: str, key: str, value: dict, *, expect_rev: int | None) -> int | None:
        text = json.dumps(value, sort_keys=True, separators=(",", ":"))
        with self._tx() as conn:
            row = conn.execute("SELECT rev FROM sil_state WHERE kind = ? AND key = ?", (kind, key)).fetchone()
            rev = row[0] if row else 0
            if expect_rev is not None and rev != expect_rev:
                return None
            conn.execute(
                "INSERT INTO sil_state (kind, key, value, rev) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (kind, key) DO UPDATE SET value = excluded.value, rev = excluded.rev",
                (kind, key, text, rev + 1),
            )
            return rev + 1

    def kv_list(self, kind: str):
        rows = self._query("SELECT key, value, rev FROM sil_state WHERE kind = ? ORDER BY key", (kind,))
        return [(k, json.loads(v), r) for k, v, r in rows]

    def trail_append(self, build):
        with self._tx() as conn:
            row = conn.execute("SELECT event FROM sil_trail ORDER BY seq DESC LIMIT 1").fetchone()
            event = build(json.loads(row[0]) if row else None)
            conn.execute("INSERT INTO sil_trail (seq, target, hash, event) VALUES (?, ?, ?, ?)",
                         (event["seq"], event.get("target"), event["hash"], json.dumps(event, sort_keys=True)))
            conn.execute(  # the head anchor, in the same transaction: a truncated trail shows
                "INSERT INTO sil_state (kind, key, value, rev) VALUES ('trail', 'head', ?, ?) "
                "ON CONFLICT (kind, key) DO UPDATE SET value = excluded.value, rev = excluded.rev",
                (json.dumps({"seq": event["seq"], "hash": event["hash"]}), event["seq"]),
            )
            return event

    def trail_read(self, *, target=None, after_seq=0, limit=None):
        sql, params = "SELECT event FROM sil_trail WHERE seq > ?", [after_seq]
        if target is not None:
            sql += " AND target = ?"
            params.append(target)
        sql += " ORDER BY seq"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(int(limit))
        return [json.loads(r[0]) for r in self._query(sql, params)]

    def retain(self, *, max_age_s: float | None = None, max_calls: int | None = None, now: float | None = None) -> int:
        """Delete raw records older than ``max_age_s`` (and hourly cells older than that
        hour) and records beyond the newest ``max_calls`` per target. All-time cells stay."""
        now = time.time() if now is None else now
        removed = 0
        with self._tx() as conn:
            if max_age_s is not None:
                cutoff = now - max_age_s
                removed += conn.execute("DELETE FROM sil_calls WHERE ts < ?", (cutoff,)).rowcount
                hour = int(cutoff // BUCKET_S)
                conn.execute("DELETE FROM sil_cells WHERE hour <> ? AND hour < ?", (ALL_TIME, hour))
                conn.execute("DELETE FROM sil_hist WHERE hour <> ? AND hour < ?", (ALL_TIME, hour))
                conn.execute("DELETE FROM sil_metrics WHERE hour <> ? AND hour < ?", (ALL_TIME, hour))
            if max_calls is not None:
                removed += conn.execute(
                    "DELETE FROM sil_calls WHERE rowid IN (SELECT rowid FROM (SELECT rowid, ROW_NUMBER() OVER "
                    "(PARTITION BY target ORDER BY ts DESC, id DESC) AS rn FROM sil_calls) WHERE rn > ?)",
                    (max(0, int(max_calls)),),
                ).rowcount
        return removed

    def close(self) -> None:
        with self._lock:
            try:
                self._conn.close()
            except sqlite3.Error:
                pass
