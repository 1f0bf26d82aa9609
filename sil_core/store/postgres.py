"""``postgresql://user@host/db``: many workers on many hosts share one store.

Every table lives in one schema (``?schema=NAME`` in the URL or the ``schema`` argument;
``public`` by default), created on first use from the declaration in
:mod:`sil_core.store._schema` (shared with SQLite). A store written by an earlier release is
brought up to date by the append-only :data:`MIGRATIONS` list, recorded in
``sil_schema_version``; both run under a transaction-level advisory lock, so any number of
processes may start at once.

A write batch is one transaction: new records are inserted with ``ON CONFLICT (id) DO
NOTHING ... RETURNING id`` and only the rows actually inserted count toward the cells (a
retried batch never counts twice); feedback locks its records (``SELECT ... FOR UPDATE``)
and adds the difference it makes; all cell increments are then upserted in key order
(``ON CONFLICT ... DO UPDATE SET n = n + EXCLUDED.n``), so concurrent batches neither lose
increments nor deadlock. Reads of statistics sum cells, metric moments (``sil_metrics``) and
histograms with ``GROUP BY`` in one statement (one snapshot); they never touch the raw records.

Feedback for a call not stored yet waits in ``sil_pending_feedback`` (per field the value
given last and when, and when it was received) and is folded into the record by the batch
that inserts it. A record and its early feedback may be written by two transactions at
once, each blind to the other's uncommitted row; so call ids hash into 16 buckets, each a
transaction-level advisory lock per schema, taken in bucket order before any row lock: a
batch holds its records' buckets shared (record writers never wait for each other), a
batch that may keep pending feedback holds those calls' buckets exclusive, and whichever
commits second sees the other's row. Pending rows received more than ``pending_max_age_s``
ago are never applied; they, and the oldest beyond ``pending_max`` rows, are deleted
(``FOR UPDATE SKIP LOCKED``, never waiting) whenever a batch keeps pending feedback.

The server may be down when the store is opened: the constructor checks the URL (a
malformed one raises :class:`~sil_core.errors.ConfigError`) and tries to connect once;
if the server cannot be reached the store starts degraded, and the first operation that
reaches it migrates the schema. While it is down every operation raises
:class:`~sil_core.errors.StoreError`, after at most ``connect_timeout`` seconds, and at
once (without a new attempt) for a short backoff after a failed attempt (0.25 s doubling
up to 2 s), which the Guard's writer turns into retries while records wait in its bounded
queue. The ``sil_core`` logger says once when the server becomes unreachable and once when
it is back.

No operation waits forever: ``connect_timeout`` bounds a connection attempt,
``lock_timeout_s`` every wait for a lock (rows, advisory locks, the schema lock while
migrating) and ``statement_timeout_s`` every statement (10 s each by default; ``None``
keeps the server's setting). :meth:`PostgresStore.retain` allows its statements at least
10 minutes, as deleting a large backlog may take that long.

State rows (``sil_state``) are compare-and-set in a single statement each: ``INSERT ... ON
CONFLICT DO NOTHING`` creates, ``UPDATE ... WHERE rev = N`` updates, and the row-count says
who won, so exactly one of any number of writers on any number of hosts does. Trail
appends (``sil_trail``) queue on a transaction-level advisory lock per schema, read the
last event, insert the new one and move the ``("trail", "head")`` row in one transaction.

One connection per store instance, shared by its threads under a lock; a connection that
was lost is replaced once, transparently (writes are idempotent, so a batch whose commit
was cut off may safely run again). psycopg is imported only when a store is opened.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import zlib
from dataclasses import replace
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Sequence, TypeVar
from urllib.parse import unquote, urlsplit, urlunsplit

from ..aggregates import ALL_TIME, BUCKET_S, FIELDS, Cell, CellKey, cells_for, feedback_delta
from ..errors import ConfigError, MissingExtra, StoreError
from ..metrics import MOMENTS
from ..records import CallRecord, Feedback
from . import _schema
from ._common import (
    Judged, Pending, apply_feedback, dump_json, fold_pending, load_late_metrics, load_metrics, merge_cells,
    merge_pending, moments, pending_bounds,
)
from .base import PENDING_MAX, PENDING_MAX_AGE_S, Store

__all__ = ("MIGRATIONS", "PostgresStore")

T = TypeVar("T")

DEFAULT_SCHEMA = "public"
#: first key of the two-part advisory lock taken while migrating ("SIL\0")
_LOCK_CLASS = 0x53494C00
#: first key of the two-part advisory lock that serialises trail appenders ("SIL\1")
_TRAIL_LOCK_CLASS = 0x53494C01
#: first key of the advisory locks of the pending-feedback buckets ("SIL\x10" + bucket)
_PENDING_LOCK_CLASS = 0x53494C10
#: how many buckets call ids hash into for those locks (few: a batch takes each at most once)
_PENDING_BUCKETS = 16
#: how often a write is retried after a deadlock or serialization failure
_CONFLICT_RETRIES = 3
#: after a failed connection attempt, operations fail at once for this long (doubling)
_BACKOFF_MIN_S, _BACKOFF_MAX_S = 0.25, 2.0
#: the least statement timeout retain() runs with
_RETAIN_TIMEOUT_S = 600.0

_log = logging.getLogger("sil_core")

def _array_types(table: _schema.Table, names: Sequence[str] | None = None) -> tuple[str, ...]:
    """The array parameter types (``int8``, ...) of some columns of a table of :mod:`._schema`."""
    return tuple(_schema.PG_ARRAY_TYPES[t] for t in table.types(tuple(names) if names else None))


CALL_COLUMNS = _schema.CALLS.column_names
_CALL_TYPES = _array_types(_schema.CALLS)
_FEEDBACK_COLUMNS = ("id", "feedback_success", "feedback_score", "feedback_success_ts", "feedback_score_ts",
                     "feedback_metrics")
_PENDING_COLUMNS = _schema.PENDING.column_names
_PENDING_TYPES = _array_types(_schema.PENDING)
_CELL_KEY = tuple(c.name for c in _schema.CELL_KEY)  # target, version, arm, hour
_FLOAT_FIELDS = frozenset(name for name in FIELDS if isinstance(getattr(Cell(), name), float))

#: Append-only: entry ``i`` moves a store written by an earlier release to version ``i + 1``
#: (a new store is created from :mod:`._schema` at the last version). ``{schema}`` is the
#: quoted schema name; statements are separated by ``;``. Never edit an entry once released.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE IF NOT EXISTS {schema}.sil_calls (
        id text PRIMARY KEY,
        target text NOT NULL,
        ts double precision NOT NULL,
        duration_s double precision NOT NULL,
        outcome text NOT NULL,
        error_type text,
        error_message text,
        version text,
        arm text,
        attempt integer NOT NULL DEFAULT 1,
        score double precision,
        context text,
        feedback_success boolean,
        feedback_score double precision
    );
    CREATE INDEX IF NOT EXISTS sil_calls_target_ts ON {schema}.sil_calls (target, ts);
    CREATE INDEX IF NOT EXISTS sil_calls_target_version ON {schema}.sil_calls (target, version);
    CREATE INDEX IF NOT EXISTS sil_calls_ts ON {schema}.sil_calls (ts);
    CREATE TABLE IF NOT EXISTS {schema}.sil_cells (
        target text NOT NULL,
        version text NOT NULL,
        arm text NOT NULL,
        hour bigint NOT NULL,
        n bigint NOT NULL DEFAULT 0,
        n_ok bigint NOT NULL DEFAULT 0,
        n_error bigint NOT NULL DEFAULT 0,
        n_interrupted bigint NOT NULL DEFAULT 0,
        n_cancelled bigint NOT NULL DEFAULT 0,
        n_blocked bigint NOT NULL DEFAULT 0,
        successes bigint NOT NULL DEFAULT 0,
        failures bigint NOT NULL DEFAULT 0,
        lat_n bigint NOT NULL DEFAULT 0,
        lat_sum double precision NOT NULL DEFAULT 0,
        lat_sumsq double precision NOT NULL DEFAULT 0,
        score_n bigint NOT NULL DEFAULT 0,
        score_sum double precision NOT NULL DEFAULT 0,
        score_sumsq double precision NOT NULL DEFAULT 0,
        PRIMARY KEY (target, hour, version, arm)
    );
    CREATE TABLE IF NOT EXISTS {schema}.sil_hist (
        target text NOT NULL,
        version text NOT NULL,
        arm text NOT NULL,
        hour bigint NOT NULL,
        bin integer NOT NULL,
        n bigint NOT NULL,
        PRIMARY KEY (target, hour, version, arm, bin)
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS {schema}.sil_state (
        kind text NOT NULL,
        key text NOT NULL,
        value text NOT NULL,
        rev bigint NOT NULL,
        PRIMARY KEY (kind, key)
    );
    CREATE TABLE IF NOT EXISTS {schema}.sil_trail (
        seq bigint PRIMARY KEY,
        target text,
        hash text NOT NULL,
        event text NOT NULL
    );
    CREATE INDEX IF NOT EXISTS sil_trail_target ON {schema}.sil_trail (target, seq)
    """,
    "ALTER TABLE {schema}.sil_cells ADD COLUMN IF NOT EXISTS n_retried bigint NOT NULL DEFAULT 0",
    """
    ALTER TABLE {schema}.sil_calls
        ADD COLUMN IF NOT EXISTS feedback_success_ts double precision,
        ADD COLUMN IF NOT EXISTS feedback_score_ts double precision;
    CREATE TABLE IF NOT EXISTS {schema}.sil_pending_feedback (
        call_id text PRIMARY KEY,
        success boolean,
        success_ts double precision,
        score double precision,
        score_ts double precision,
        received double precision NOT NULL
    );
    CREATE INDEX IF NOT EXISTS sil_pending_feedback_received ON {schema}.sil_pending_feedback (received)
    """,
    # metrics: the calls' own and late values (JSON), pending late values, per-metric moments
    """
    ALTER TABLE {schema}.sil_calls
        ADD COLUMN IF NOT EXISTS metrics text,
        ADD COLUMN IF NOT EXISTS feedback_metrics text;
    ALTER TABLE {schema}.sil_pending_feedback ADD COLUMN IF NOT EXISTS metrics text;
    CREATE TABLE IF NOT EXISTS {schema}.sil_metrics (
        target text NOT NULL,
        version text NOT NULL,
        arm text NOT NULL,
        hour bigint NOT NULL,
        name text NOT NULL,
        n bigint NOT NULL DEFAULT 0,
        sum double precision NOT NULL DEFAULT 0,
        sumsq double precision NOT NULL DEFAULT 0,
        log_n bigint NOT NULL DEFAULT 0,
        log_sum double precision NOT NULL DEFAULT 0,
        log_sumsq double precision NOT NULL DEFAULT 0,
        PRIMARY KEY (target, hour, version, arm, name)
    )
    """,
)

# connections inherited through fork(): kept referenced so that finalising them in the
# child never sends a Terminate message over the parent's socket
_INHERITED: list[Any] = []


def _import_psycopg() -> Any:
    try:
        import psycopg
    except ImportError as exc:
        raise MissingExtra("postgres", "psycopg") from exc
    return psycopg


def quote_ident(name: str) -> str:
    """``name`` as a PostgreSQL quoted identifier."""
    return '"' + name.replace('"', '""') + '"'


def split_url(url: str) -> tuple[str, str | None]:
    """``(conninfo, schema)``: the URL libpq understands, and its ``schema`` parameter.

    The ``postgresql+psycopg`` scheme (SQLAlchemy style) becomes ``postgresql``; every other
    query parameter is passed to libpq verbatim.
    """
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("postgresql", "postgres", "postgresql+psycopg"):
        raise ConfigError(f"not a PostgreSQL URL: {redact(url)!r}")
    schema = None
    kept = []
    for item in parts.query.split("&") if parts.query else ():
        key, _, value = item.partition("=")
        if unquote(key) == "schema":
            schema = unquote(value)
        elif item:
            kept.append(item)
    conninfo = urlunsplit(("postgresql", parts.netloc, parts.path, "&".join(kept), parts.fragment))
    return conninfo, schema


def redact(url: str) -> str:
    """The URL with its password (if any) replaced by ``***``."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "postgresql://***"
    if parts.password is None:
        return url
    userinfo, _, hostinfo = parts.netloc.rpartition("@")
    user = userinfo.split(":", 1)[0]
    return urlunsplit((parts.scheme, f"{user}:***@{hostinfo}", parts.path, parts.query, parts.fragment))


def _clean(text: Any) -> str | None:
    """Text PostgreSQL accepts: NUL characters and lone surrogates are replaced."""
    if text is None:
        return None
    text = str(text)
    if "\x00" in text:
        text = text.replace("\x00", "\ufffd")
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            text = text.encode("utf-8", "replace").decode("utf-8")
    return text


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


def _context(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return _clean(value)
    from .._internal.jsonsafe import dumps_context

    return _clean(dumps_context(value))


def record_to_row(r: CallRecord) -> tuple:
    return (
        _clean(r.id), _clean(r.target), float(r.ts), float(r.duration_s), _clean(r.outcome),
        _clean(r.error_type), _clean(r.error_message), _clean(r.version), _clean(r.arm),
        int(r.attempt or 1), _float(r.score), _context(r.context),
        None if r.feedback_success is None else bool(r.feedback_success), _float(r.feedback_score),
        _float(r.feedback_success_ts), _float(r.feedback_score_ts), dump_json(r.metrics), dump_json(r.feedback_metrics),
    )


def row_to_record(row: Sequence) -> CallRecord:
    record = CallRecord(*row)
    if record.metrics is not None:
        record.metrics = load_metrics(record.metrics)
    if record.feedback_metrics is not None:
        record.feedback_metrics = load_late_metrics(record.feedback_metrics)
    return record


def _pending_row(p: Pending) -> tuple:
    return (p.call_id, p.success, _float(p.success_ts), _float(p.score), _float(p.score_ts), float(p.received),
            dump_json(p.metrics))


def _row_to_pending(row: Sequence) -> Pending:
    entry = Pending(*row)
    if entry.metrics is not None:
        entry.metrics = load_late_metrics(entry.metrics)
    return entry


def _bucket(call_id: str) -> int:
    """The advisory-lock bucket of a (cleaned) call id: the same in every process."""
    return zlib.crc32(call_id.encode("utf-8", "surrogatepass")) % _PENDING_BUCKETS


def _ms(seconds: float | None) -> str | None:
    """A timeout as a PostgreSQL setting (at least 1 ms), or ``None`` to keep the server's."""
    return None if seconds is None else f"{max(1, int(round(seconds * 1000)))}ms"


def _columns(rows: Sequence[Sequence], width: int) -> list[list]:
    """Rows to per-column lists (the arrays ``unnest`` takes)."""
    return [list(column) for column in zip(*rows)] if rows else [[] for _ in range(width)]


def _unnest(types: Sequence[str], names: Sequence[str]) -> str:
    """``unnest(%s::t1[], ...) WITH ORDINALITY AS u(names..., ord)`` for array parameters."""
    arrays = ", ".join(f"%s::{t}[]" for t in types)
    return f"unnest({arrays}) WITH ORDINALITY AS u({', '.join(names)}, ord)"


class _Sql:
    """Every statement, qualified with one schema."""

    def __init__(self, schema: str) -> None:
        s = quote_ident(schema)
        self.schema = s
        cols = ", ".join(CALL_COLUMNS)
        self.select_call = f"SELECT {cols} FROM {s}.sil_calls"
        self.insert_calls = (
            f"INSERT INTO {s}.sil_calls ({cols}) "
            f"SELECT {cols} FROM {_unnest(_CALL_TYPES, CALL_COLUMNS)} ORDER BY ord "
            f"ON CONFLICT (id) DO NOTHING RETURNING id"
        )
        self.lock_calls = f'{self.select_call} WHERE id = ANY(%s::text[]) ORDER BY id COLLATE "C" FOR UPDATE'
        self.update_feedback = (
            f"UPDATE {s}.sil_calls AS c SET feedback_success = u.fs, feedback_score = u.fsc, "
            f"feedback_success_ts = u.fst, feedback_score_ts = u.fsct, feedback_metrics = u.fm "
            f"FROM {_unnest(_array_types(_schema.CALLS, _FEEDBACK_COLUMNS), ('id', 'fs', 'fsc', 'fst', 'fsct', 'fm'))} "
            f"WHERE c.id = u.id"
        )
        self.stored_ids = f"SELECT id FROM {s}.sil_calls WHERE id = ANY(%s::text[])"
        # in bucket order (the sorted subquery is never flattened), before any row lock
        self.lock_buckets = (
            "SELECT CASE WHEN o.x THEN pg_advisory_xact_lock(o.k, hashtext(%s))::text "
            "ELSE pg_advisory_xact_lock_shared(o.k, hashtext(%s))::text END "
            "FROM (SELECT k, x FROM unnest(%s::int4[], %s::bool[]) AS u(k, x) ORDER BY k) AS o"
        )
        pcols = ", ".join(_PENDING_COLUMNS)
        self.take_pending = f"DELETE FROM {s}.sil_pending_feedback WHERE call_id = ANY(%s::text[]) RETURNING {pcols}"
        self.lock_pending = (
            f'SELECT {pcols} FROM {s}.sil_pending_feedback WHERE call_id = ANY(%s::text[]) '
            f'ORDER BY call_id COLLATE "C" FOR UPDATE'
        )
        self.upsert_pending = (
            f"INSERT INTO {s}.sil_pending_feedback AS p ({pcols}) "
            f"SELECT {pcols} FROM {_unnest(_PENDING_TYPES, _PENDING_COLUMNS)} ORDER BY ord "
            f"ON CONFLICT (call_id) DO UPDATE SET "
            + ", ".join(f"{c} = EXCLUDED.{c}" for c in _PENDING_COLUMNS[1:])
        )
        self.prune_pending_age = (
            f"DELETE FROM {s}.sil_pending_feedback WHERE call_id IN (SELECT call_id FROM {s}.sil_pending_feedback "
            f"WHERE received < %s FOR UPDATE SKIP LOCKED)"
        )
        self.prune_pending_count = (
            f"DELETE FROM {s}.sil_pending_feedback WHERE call_id IN (SELECT call_id FROM {s}.sil_pending_feedback "
            f'ORDER BY received DESC, call_id COLLATE "C" DESC OFFSET %s FOR UPDATE SKIP LOCKED)'
        )
        key = _CELL_KEY
        cell_cols = ", ".join((*key, *FIELDS))
        self.upsert_cells = (
            f"INSERT INTO {s}.sil_cells AS c ({cell_cols}) "
            f"SELECT {cell_cols} FROM {_unnest(_array_types(_schema.CELLS, (*key, *FIELDS)), (*key, *FIELDS))} "
            f"ORDER BY ord ON CONFLICT ({', '.join(key)}) DO UPDATE SET "
            + ", ".join(f"{f} = c.{f} + EXCLUDED.{f}" for f in FIELDS)
        )
        hist_names = _schema.HIST.column_names  # target, version, arm, hour, bin, n
        hist_cols = ", ".join(hist_names)
        self.upsert_hist = (
            f"INSERT INTO {s}.sil_hist AS h ({hist_cols}) "
            f"SELECT {hist_cols} FROM {_unnest(_array_types(_schema.HIST), hist_names)} "
            f"ORDER BY ord ON CONFLICT ({', '.join(key)}, bin) DO UPDATE SET n = h.n + EXCLUDED.n"
        )
        metric_names = _schema.METRICS.column_names  # target, version, arm, hour, name, moments
        metric_cols = ", ".join(metric_names)
        self.upsert_metrics = (
            f"INSERT INTO {s}.sil_metrics AS m ({metric_cols}) "
            f"SELECT {metric_cols} FROM {_unnest(_array_types(_schema.METRICS), metric_names)} "
            f"ORDER BY ord ON CONFLICT ({', '.join(key)}, name) DO UPDATE SET "
            + ", ".join(f"{m} = m.{m} + EXCLUDED.{m}" for m in MOMENTS)
        )
        self.metrics_table = f"{s}.sil_metrics"
        self.cells_table = f"{s}.sil_cells"
        self.hist_table = f"{s}.sil_hist"
        self.calls_table = f"{s}.sil_calls"
        self.version_table = f"{s}.sil_schema_version"
        self.state_table = f"{s}.sil_state"
        self.trail_table = f"{s}.sil_trail"
        self.kv_get = f"SELECT value, rev FROM {s}.sil_state WHERE kind = %s AND key = %s"
        self.kv_create = (
            f"INSERT INTO {s}.sil_state (kind, key, value, rev) VALUES (%s, %s, %s, 1) "
            f"ON CONFLICT (kind, key) DO NOTHING"
        )
        self.kv_update = (
            f"UPDATE {s}.sil_state SET value = %s, rev = rev + 1 WHERE kind = %s AND key = %s AND rev = %s"
        )
        self.kv_upsert = (
            f"INSERT INTO {s}.sil_state AS st (kind, key, value, rev) VALUES (%s, %s, %s, 1) "
            f"ON CONFLICT (kind, key) DO UPDATE SET value = EXCLUDED.value, rev = st.rev + 1 RETURNING rev"
        )
        self.kv_list = f'SELECT key, value, rev FROM {s}.sil_state WHERE kind = %s ORDER BY key COLLATE "C"'
        self.trail_last = f"SELECT event FROM {s}.sil_trail ORDER BY seq DESC LIMIT 2"
        self.trail_insert = f"INSERT INTO {s}.sil_trail (seq, target, hash, event) VALUES (%s, %s, %s, %s)"
        self.trail_head = (
            f"INSERT INTO {s}.sil_state (kind, key, value, rev) VALUES ('trail', 'head', %s, %s) "
            f"ON CONFLICT (kind, key) DO UPDATE SET value = EXCLUDED.value, rev = EXCLUDED.rev"
        )
        self.trail_read = f"SELECT event FROM {s}.sil_trail WHERE seq > %s"


class PostgresStore(Store):
    """A PostgreSQL database shared by every process and host that opens it."""

    capabilities = frozenset({"retention", "multiprocess"})

    def __init__(
        self,
        url: str,
        *,
        schema: str | None = None,
        connect_timeout: float = 10,
        lock_timeout_s: float | None = 10.0,
        statement_timeout_s: float | None = 10.0,
        pending_max_age_s: float = PENDING_MAX_AGE_S,
        pending_max: int = PENDING_MAX,
    ) -> None:
        """Check the URL and options, then try the server once; an unreachable server
        leaves the store degraded, not failed (see the module docstring).

        ``connect_timeout`` (whole seconds) bounds a connection attempt; ``lock_timeout_s``
        and ``statement_timeout_s`` are set on the connection (``None``: the server's own);
        ``pending_max_age_s``/``pending_max`` bound feedback kept for calls not stored yet.
        Raises :class:`ConfigError` for a malformed URL or option, :class:`MissingExtra`
        without psycopg, and :class:`StoreError` when the server refuses the schema (not
        when it cannot be reached).
        """
        self._pg = _import_psycopg()
        self.url = url
        self._conninfo, url_schema = split_url(url)
        try:
            self._pg.conninfo.conninfo_to_dict(self._conninfo)
        except self._pg.Error as exc:
            raise ConfigError(f"invalid PostgreSQL URL {redact(url)!r}: {_redact_text(str(exc), url)}") from None
        self.schema = schema or url_schema or DEFAULT_SCHEMA
        if len(self.schema.encode("utf-8")) > 63 or "\x00" in self.schema:
            raise ConfigError(f"invalid PostgreSQL schema name {self.schema!r} (at most 63 bytes)")
        for name, value in (("connect_timeout", connect_timeout), ("lock_timeout_s", lock_timeout_s),
                            ("statement_timeout_s", statement_timeout_s)):
            if value is None and name != "connect_timeout":
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ConfigError(f"{name} must be a positive number{'' if name == 'connect_timeout' else ' or None'}, "
                                  f"not {value!r}")
        self.pending_max_age_s, self.pending_max = pending_bounds(pending_max_age_s, pending_max)
        self._connect_timeout = max(1, int(round(connect_timeout)))
        self._lock_timeout = _ms(lock_timeout_s)
        self._statement_timeout_s = statement_timeout_s
        self._sql = _Sql(self.schema)
        self._lock = threading.Lock()
        self._conn: Any = None
        self._pid = os.getpid()
        self._closed = False
        self._ready = False  # the schema is known to be migrated
        self._down: BaseException | None = None  # the last failed connection attempt, while down
        self._backoff = 0.0
        self._retry_at = 0.0
        try:
            self._run("open", lambda conn: None)
        except StoreError as exc:
            if not isinstance(exc.__cause__, self._pg.OperationalError):
                self.close()
                raise
            # unreachable, or busy (a lock or statement timeout): start degraded
        except BaseException:
            self.close()
            raise

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {redact(self.url)}>"

    # -- connection ------------------------------------------------------------------------
    @contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        """Driver errors become :class:`StoreError` (the driver's exception is the cause)."""
        try:
            yield
        except self._pg.Error as exc:
            raise StoreError(f"{redact(self.url)}: {action} failed: {exc}") from exc

    def _connection(self) -> Any:
        conn = self._conn
        if conn is not None and self._pid != os.getpid():  # inherited through fork()
            _INHERITED.append(conn)
            conn = self._conn = None
        if conn is not None and (conn.closed or conn.broken):
            self._discard()
            conn = None
        if conn is None:
            if self._down is not None and time.monotonic() < self._retry_at:
                raise StoreError(f"{redact(self.url)}: the server is unreachable (next attempt in "
                                 f"{self._retry_at - time.monotonic():.2f} s): {self._down}") from self._down
            params = {"autocommit": True, "connect_timeout": self._connect_timeout}
            if "application_name" not in self._conninfo:
                params["application_name"] = "sil-guard"
            try:
                conn = self._pg.connect(self._conninfo, **params)
                try:
                    self._configure(conn)
                except BaseException:
                    conn.close()
                    raise
            except self._pg.OperationalError as exc:
                self._unreachable(exc)
                raise
            self._conn = conn
            self._pid = os.getpid()
            self._reachable()
        return conn

    def _configure(self, conn: Any) -> None:
        """Session settings that bound every wait: lock and statement timeouts."""
        settings = [(name, value) for name, value in (
            ("lock_timeout", self._lock_timeout), ("statement_timeout", _ms(self._statement_timeout_s)),
        ) if value is not None]
        if settings:
            conn.execute("SELECT " + ", ".join("set_config(%s, %s, false)" for _ in settings),
                         [x for pair in settings for x in pair])

    def _unreachable(self, exc: BaseException) -> None:
        """A connection attempt failed: fail fast for a while, and say so once."""
        if self._down is None:
            _log.warning("sil-guard: the PostgreSQL store %s is unreachable (%s); operations fail until it is "
                         "back, and the guard keeps records in memory and retries", redact(self.url),
                         _redact_text(str(exc).strip(), self.url))
        self._down = exc
        self._backoff = min(_BACKOFF_MAX_S, max(_BACKOFF_MIN_S, self._backoff * 2))
        self._retry_at = time.monotonic() + self._backoff

    def _reachable(self) -> None:
        if self._down is not None:
            _log.warning("sil-guard: the PostgreSQL store %s is reachable again", redact(self.url))
        self._down = None
        self._backoff = 0.0

    def _discard(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # closing a broken connection may fail; it is gone either way
                pass

    def _run(self, action: str, fn: Callable[[Any], T]) -> T:
        """Run ``fn(connection)`` under the lock; reconnect once if the connection was lost,
        retry a few times after a deadlock or serialization failure."""
        pg = self._pg
        with self._lock, self._errors(action):
            if self._closed:
                raise StoreError(f"{redact(self.url)}: the store is closed")
            reconnected = False
            conflicts = 0
            while True:
                conn = self._connection()
                try:
                    if not self._ready:  # the first operation that reaches the server migrates
                        self._migrate(conn)
                        self._ready = True
                    return fn(conn)
                except pg.errors.TransactionRollback:
                    conflicts += 1
                    if conflicts >= _CONFLICT_RETRIES or conn.broken:
                        raise
                except pg.Error:
                    if reconnected or not (conn.closed or conn.broken):
                        raise
                    self._discard()
                    reconnected = True

    def _query(self, action: str, sql: str, params: Sequence = ()) -> list:
        return self._run(action, lambda conn: conn.execute(sql, params).fetchall())

    def _migrate(self, conn: Any) -> None:
        """Bring the schema up to date. Concurrent openers queue on an advisory lock; a
        catalog race with a process that does not take it (two ``CREATE ... IF NOT
        EXISTS`` at once raise a unique violation) is retried."""
        pg = self._pg
        races = (pg.errors.UniqueViolation, pg.errors.DuplicateObject, pg.errors.DuplicateTable,
                 pg.errors.DuplicateSchema)
        for attempt in range(5):
            try:
                return self._migrate_once(conn)
            except races:
                if attempt == 4:
                    raise
                time.sleep(0.05 * (attempt + 1))

    def _migrate_once(self, conn: Any) -> None:
        sql = self._sql
        if self._schema_version(conn) >= len(MIGRATIONS):
            return
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (_LOCK_CLASS, self.schema))
            if conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (self.schema,)).fetchone() is None:
                conn.execute(f"CREATE SCHEMA IF NOT EXISTS {sql.schema}")
            conn.execute(
                f"CREATE TABLE IF NOT EXISTS {sql.version_table} "
                "(version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            current = conn.execute(f"SELECT coalesce(max(version), 0) FROM {sql.version_table}").fetchone()[0]
            if current == 0 and conn.execute("SELECT to_regclass(%s)", (sql.calls_table,)).fetchone()[0] is None:
                for statement in _schema.create_statements("postgresql", sql.schema):  # a new store
                    conn.execute(statement)
                conn.execute(f"INSERT INTO {sql.version_table} (version) SELECT generate_series(1, %s)",
                             (len(MIGRATIONS),))
                return
            for number, script in enumerate(MIGRATIONS[current:], start=current + 1):
                for statement in filter(str.strip, script.format(schema=sql.schema).split(";")):
                    conn.execute(statement)
                conn.execute(f"INSERT INTO {sql.version_table} (version) VALUES (%s)", (number,))

    def _schema_version(self, conn: Any) -> int:
        """The applied schema version, read without locking (0 when there is none yet)."""
        exists = conn.execute("SELECT to_regclass(%s)", (self._sql.version_table,)).fetchone()[0]
        if exists is None:
            return 0
        return conn.execute(f"SELECT coalesce(max(version), 0) FROM {self._sql.version_table}").fetchone()[0]

    # -- writes ----------------------------------------------------------------------------
    def write(self, calls: Sequence[CallRecord], feedback: Sequence[Feedback] = ()) -> list[CallRecord]:
        if not calls and not feedback:
            return []
        # one row per id (the last wins, as in the other backends), in id order so that
        # concurrent batches take row locks in the same order
        unique = sorted({r.id: r for r in calls}.values(), key=lambda r: r.id)
        feedback = [fb if fb.call_id == _clean(fb.call_id) else replace(fb, call_id=_clean(fb.call_id))
                    for fb in feedback if fb.call_id is not None]
        now = time.time()
        return self._run("write", lambda conn: self._write(conn, unique, feedback, now))

    def _write(self, conn: Any, calls: list[CallRecord], feedback: list[Feedback], now: float) -> list[CallRecord]:
        sql = self._sql
        judged = Judged()
        cutoff = now - self.pending_max_age_s
        ids = [_clean(r.id) for r in calls]
        deltas: dict[CellKey, Cell] = {}
        with conn.transaction():
            batch = set(ids)
            others = list(dict.fromkeys(fb.call_id for fb in feedback if fb.call_id not in batch))
            absent: list[str] = []
            if others:  # a plain read: which feedback may have to wait for its call
                stored = {row[0] for row in conn.execute(sql.stored_ids, (others,)).fetchall()}
                absent = [cid for cid in others if cid not in stored]
            self._lock_buckets(conn, ids, absent)
            if calls:
                waiting = {}
                for row in conn.execute(sql.take_pending, (ids,)).fetchall():
                    entry = _row_to_pending(row)
                    if entry.received >= cutoff:
                        waiting[entry.call_id] = entry
                records = [fold_pending(r, waiting.get(cid)) for r, cid in zip(calls, ids)]
                rows = [record_to_row(r) for r in records]
                inserted = {row[0] for row in conn.execute(sql.insert_calls, _columns(rows, len(CALL_COLUMNS))).fetchall()}
                fresh = []
                for given, record, cid in zip(calls, records, ids):
                    if cid in inserted:
                        judged.known(given)
                        if cid in waiting:
                            judged.now(record)
                        fresh.append(record)
                deltas = cells_for(fresh)
                # pending feedback of a call stored already applies to it like any feedback
                late = [fb for cid, entry in waiting.items() if cid not in inserted for fb in entry.as_feedback()]
                feedback = late + feedback
            if feedback:
                self._apply_feedback(conn, feedback, deltas, judged, now, cutoff, set(absent))
            self._upsert_cells(conn, deltas)
        return judged.changed()

    def _lock_buckets(self, conn: Any, shared: Sequence[str], exclusive: Sequence[str]) -> None:
        """Take the advisory locks of the calls' buckets, in bucket order: shared for
        records being inserted, exclusive for calls whose feedback may have to wait."""
        modes: dict[int, bool] = {}
        for cid in shared:
            modes.setdefault(_bucket(cid), False)
        for cid in exclusive:
            modes[_bucket(cid)] = True
        if modes:
            keys = sorted(modes)
            conn.execute(self._sql.lock_buckets, (self.schema, self.schema, [_PENDING_LOCK_CLASS + k for k in keys],
                                                  [modes[k] for k in keys])).fetchall()

    def _apply_feedback(self, conn: Any, feedback: list[Feedback], deltas: dict[CellKey, Cell], judged: Judged,
                        now: float, cutoff: float, exclusive: set[str]) -> None:
        sql = self._sql
        ids = sorted({fb.call_id for fb in feedback})
        locked = {row[0]: row_to_record(row) for row in conn.execute(sql.lock_calls, (ids,)).fetchall()}
        current = dict(locked)
        missing = [cid for cid in ids if cid not in locked]
        pending: dict[str, Pending] = {}
        if missing:
            late = [cid for cid in missing if cid not in exclusive]
            if late:  # a call deleted since the first read (retention): lock its bucket now
                self._lock_buckets(conn, (), late)
            for row in conn.execute(sql.lock_pending, (missing,)).fetchall():
                entry = _row_to_pending(row)
                if entry.received >= cutoff:
                    pending[entry.call_id] = entry
        touched: set[str] = set()
        for fb in feedback:
            call_id = fb.call_id
            before = current.get(call_id)
            if before is None:
                pending[call_id] = merge_pending(pending.get(call_id), fb, now)
                touched.add(call_id)
                continue
            judged.known(before)
            after = apply_feedback(before, fb, now)
            if after is not before:
                current[call_id] = after
                judged.now(after)
                merge_cells(deltas, feedback_delta(before, after))
        changed = [
            (call_id, r.feedback_success, _float(r.feedback_score), _float(r.feedback_success_ts),
             _float(r.feedback_score_ts), dump_json(r.feedback_metrics))
            for call_id, r in sorted(current.items())
            if r is not locked[call_id]
        ]
        if changed:
            conn.execute(sql.update_feedback, _columns(changed, len(_FEEDBACK_COLUMNS)))
        if touched:
            rows = [_pending_row(pending[cid]) for cid in sorted(touched)]
            conn.execute(sql.upsert_pending, _columns(rows, len(_PENDING_COLUMNS)))
            conn.execute(sql.prune_pending_age, (cutoff,))
            conn.execute(sql.prune_pending_count, (self.pending_max,))

    def _upsert_cells(self, conn: Any, deltas: dict[CellKey, Cell]) -> None:
        keys = sorted(key for key, cell in deltas.items() if not cell.is_zero())
        if not keys:
            return
        cell_rows = [
            (*key, *(float(v) if name in _FLOAT_FIELDS else int(v) for name, v in zip(FIELDS, deltas[key].values())))
            for key in keys
        ]
        conn.execute(self._sql.upsert_cells, _columns(cell_rows, 4 + len(FIELDS)))
        hist_rows = [(*key, int(b), int(n)) for key in keys for b, n in sorted(deltas[key].hist.items()) if n]
        if hist_rows:
            conn.execute(self._sql.upsert_hist, _columns(hist_rows, 6))
        metric_rows = [(*key, name, int(m[0]), float(m[1]), float(m[2]), int(m[3]), float(m[4]), float(m[5]))
                       for key in keys if deltas[key].metrics
                       for name, m in sorted(deltas[key].metrics.items()) if any(m)]
        if metric_rows:
            conn.execute(self._sql.upsert_metrics, _columns(metric_rows, 11))

    # -- reads -----------------------------------------------------------------------------
    def cells(self, target: str, *, version: str | None = None, since_hour: int | None = None,
              hist: bool = True) -> dict[tuple[str, str], Cell]:
        where, params = "target = %s", [_clean(target)]
        if version is not None:
            where += " AND version = %s"
            params.append(_clean(version))
        if since_hour is None:
            where += " AND hour = %s"
            params.append(ALL_TIME)
        else:
            where += " AND hour >= %s AND hour <> %s"
            params.extend((int(since_hour), ALL_TIME))
        sums = ", ".join(f"SUM({f})" + ("" if f in _FLOAT_FIELDS else "::bigint") for f in FIELDS)
        pad = ", ".join("NULL" for _ in FIELDS[1:])
        no_moments = ", ".join("NULL" for _ in MOMENTS)
        moment_sums = ", ".join(f"SUM({m})" + ("::bigint" if m.endswith("n") else "") for m in MOMENTS)
        # one statement, so cells, metrics and histogram come from the same snapshot
        query = (
            f"SELECT version, arm, NULL::integer AS bin, NULL::text AS name, {sums}, {no_moments} "
            f"FROM {self._sql.cells_table} WHERE {where} GROUP BY version, arm "
            f"UNION ALL SELECT version, arm, NULL, name, NULL, {pad}, {moment_sums} "
            f"FROM {self._sql.metrics_table} WHERE {where} GROUP BY version, arm, name"
        )
        if hist:
            query += (
                f" UNION ALL "
                f"SELECT version, arm, bin, NULL, SUM(n)::bigint, {pad}, {no_moments} FROM {self._sql.hist_table} "
                f"WHERE {where} GROUP BY version, arm, bin"
            )
        out: dict[tuple[str, str], Cell] = {}
        extra: list[tuple] = []
        width = 4 + len(FIELDS)
        for row in self._query("cells", query, params * (3 if hist else 2)):
            if row[2] is None and row[3] is None:
                out[(row[0], row[1])] = Cell.from_values(row[4:width])
            else:
                extra.append(row)
        for row in extra:
            cell = out.get((row[0], row[1]))
            if cell is None:
                continue
            if row[3] is not None:
                m = moments(row[width:])
                if m is not None:
                    cell.metrics[row[3]] = m
            elif row[4]:
                cell.hist[row[2]] = row[4]
        return out

    def read_calls(self, target=None, *, since=None, until=None, version=None, limit=1000) -> list[CallRecord]:
        if not limit or limit <= 0:
            return []
        clauses, params = [], []
        for clause, value in (
            ("target = %s", _clean(target)), ("ts >= %s", _float(since)),
            ("ts < %s", _float(until)), ("version = %s", _clean(version)),
        ):
            if value is not None:
                clauses.append(clause)
                params.append(value)
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = self._query(
            "read_calls", f'{self._sql.select_call}{where} ORDER BY ts DESC, id COLLATE "C" DESC LIMIT %s',
            [*params, int(limit)],
        )
        return [row_to_record(r) for r in reversed(rows)]

    def get_call(self, call_id: str) -> CallRecord | None:
        rows = self._query("get_call", self._sql.select_call + " WHERE id = %s", (_clean(call_id),))
        return row_to_record(rows[0]) if rows else None

    def targets(self) -> list[str]:
        rows = self._query("targets", f"SELECT DISTINCT target FROM {self._sql.cells_table} WHERE hour = %s", (ALL_TIME,))
        return sorted(r[0] for r in rows)

    def count_calls(self, target: str | None = None) -> int:
        if target is None:
            return self._query("count_calls", f"SELECT count(*) FROM {self._sql.calls_table}")[0][0]
        return self._query(
            "count_calls", f"SELECT count(*) FROM {self._sql.calls_table} WHERE target = %s", (_clean(target),)
        )[0][0]

    # -- state rows ------------------------------------------------------------------------
    def kv_get(self, kind: str, key: str) -> tuple[dict[str, Any], int] | None:
        rows = self._query("kv_get", self._sql.kv_get, (_clean(kind), _clean(key)))
        return (json.loads(rows[0][0]), int(rows[0][1])) if rows else None

    def kv_put(self, kind: str, key: str, value: dict[str, Any], *, expect_rev: int | None) -> int | None:
        """Compare-and-set in one statement (row locks make it safe across hosts): create
        with ``INSERT ... ON CONFLICT DO NOTHING``, update with ``UPDATE ... WHERE rev = N``.

        After a lost connection the statement runs once more; if the first attempt had
        committed, the retry reports ``None`` (lost) -- never a false win."""
        sql = self._sql
        kind, key, text = _clean(kind), _clean(key), _dump(value)

        def run(conn: Any) -> int | None:
            if expect_rev is None:
                return int(conn.execute(sql.kv_upsert, (kind, key, text)).fetchone()[0])
            if expect_rev == 0:
                return 1 if conn.execute(sql.kv_create, (kind, key, text)).rowcount == 1 else None
            rev = int(expect_rev)
            return rev + 1 if conn.execute(sql.kv_update, (text, kind, key, rev)).rowcount == 1 else None

        return self._run("kv_put", run)

    def kv_list(self, kind: str) -> list[tuple[str, dict[str, Any], int]]:
        rows = self._query("kv_list", self._sql.kv_list, (_clean(kind),))
        return [(k, json.loads(v), int(r)) for k, v, r in rows]

    # -- the trail --------------------------------------------------------------------------
    def trail_append(self, build: Callable[[dict[str, Any] | None], dict[str, Any]]) -> dict[str, Any]:
        """One transaction under a transaction-level advisory lock (one per schema), so
        appenders of every process and host queue; the head row is set in the same
        transaction. If the connection was lost at commit and the append runs again, an
        event that did commit is recognised (``build`` of its predecessor gives the same
        event) and returned instead of being appended twice."""
        sql = self._sql
        attempts = 0

        def run(conn: Any) -> dict[str, Any]:
            nonlocal attempts
            attempts += 1
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (_TRAIL_LOCK_CLASS, self.schema))
                rows = [json.loads(r[0]) for r in conn.execute(sql.trail_last).fetchall()]
                last = rows[0] if rows else None
                if attempts > 1 and last is not None and build(rows[1] if len(rows) > 1 else None) == last:
                    return last  # the earlier attempt committed
                event = build(last)
                conn.execute(sql.trail_insert, (
                    int(event["seq"]), _clean(event.get("target")), _clean(event["hash"]), _dump(event),
                ))
                conn.execute(sql.trail_head, (_dump({"seq": event["seq"], "hash": event["hash"]}), int(event["seq"])))
            return event

        return self._run("trail_append", run)

    def trail_read(self, *, target: str | None = None, after_seq: int = 0, limit: int | None = None) -> list[dict[str, Any]]:
        query, params = self._sql.trail_read, [int(after_seq)]
        if target is not None:
            query += " AND target = %s"
            params.append(_clean(target))
        query += " ORDER BY seq"
        if limit is not None:
            if limit <= 0:
                return []
            query += " LIMIT %s"
            params.append(int(limit))
        return [json.loads(r[0]) for r in self._query("trail_read", query, params)]

    def retain(self, *, max_age_s: float | None = None, max_calls: int | None = None, now: float | None = None) -> int:
        """Delete raw records older than ``max_age_s`` (and hourly cells older than that
        hour) and records beyond the newest ``max_calls`` per target. All-time cells stay.
        Returns how many raw records were deleted."""
        now = time.time() if now is None else float(now)
        sql = self._sql

        def run(conn: Any) -> int:
            removed = 0
            with conn.transaction():
                if self._statement_timeout_s is not None:  # a large backlog may take minutes
                    conn.execute("SELECT set_config('statement_timeout', %s, true)",
                                 (_ms(max(self._statement_timeout_s, _RETAIN_TIMEOUT_S)),))
                if max_age_s is not None:
                    cutoff = now - float(max_age_s)
                    removed += conn.execute(f"DELETE FROM {sql.calls_table} WHERE ts < %s", (cutoff,)).rowcount
                    hour = int(cutoff // BUCKET_S)
                    for table in (sql.cells_table, sql.hist_table, sql.metrics_table):
                        conn.execute(f"DELETE FROM {table} WHERE hour <> %s AND hour < %s", (ALL_TIME, hour))
                if max_calls is not None:
                    removed += conn.execute(
                        f"DELETE FROM {sql.calls_table} AS c USING ("
                        f"SELECT id FROM (SELECT id, row_number() OVER "
                        f'(PARTITION BY target ORDER BY ts DESC, id COLLATE "C" DESC) AS rn '
                        f"FROM {sql.calls_table}) AS ranked WHERE rn > %s) AS old WHERE c.id = old.id",
                        (max(0, int(max_calls)),),
                    ).rowcount
            return removed

        return self._run("retain", run)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._conn is not None and self._pid != os.getpid():
                _INHERITED.append(self._conn)
                self._conn = None
            self._discard()


def _redact_text(text: str, url: str) -> str:
    """``text`` without the URL's password, should a driver message quote it."""
    try:
        password = urlsplit(url).password
    except ValueError:
        return text
    return text.replace(password, "***") if password else text


def _dump(value: Any) -> str:
    """JSON text of a state value or an event (ASCII: no NUL or lone surrogate reaches the server)."""
    return json.dumps(value, sort_keys=True)

