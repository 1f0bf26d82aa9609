"""One schema declaration (``sil_core.store._schema``): a new SQL store is created from it,
and a store written by an earlier release, migrated, ends up exactly the same."""

from __future__ import annotations

import sqlite3
import uuid
from pathlib import Path

import pytest

from sil_core.records import CallRecord, Outcome
from sil_core.store import _schema, open_store

from ..conftest import PG_BASE

FIXTURE_SQL = Path(__file__).resolve().parents[1] / "fixtures" / "v1" / "sqlite.sql"


def test_backends_take_their_columns_from_the_declaration():
    from sil_core.store import postgres, sqlite

    assert sqlite.CALL_COLUMNS == postgres.CALL_COLUMNS == _schema.CALLS.column_names
    assert postgres._PENDING_COLUMNS == _schema.PENDING.column_names
    assert sqlite._PENDING_COLS == ", ".join(_schema.PENDING.column_names)
    declared = {t.name for t in _schema.TABLES}
    assert {i.table for i in _schema.INDEXES} <= declared
    for table in _schema.TABLES:
        assert set(table.primary_key) <= set(table.column_names)
    for index in _schema.INDEXES:
        table = next(t for t in _schema.TABLES if t.name == index.table)
        assert set(index.columns) <= set(table.column_names)


# -- SQLite ------------------------------------------------------------------------------------------
def _sqlite_layout(path: Path) -> dict:
    conn = sqlite3.connect(path)
    try:
        out: dict = {"version": conn.execute("SELECT version FROM sil_schema_version").fetchall()}
        for table in _schema.TABLES:
            cols = conn.execute(f"PRAGMA table_info({table.name})").fetchall()
            out[table.name] = {name: (typ.upper(), notnull, dflt, pk) for _, name, typ, notnull, dflt, pk in cols}
        out["indexes"] = {
            name: (tbl, [r[2] for r in conn.execute(f"PRAGMA index_info({name})")])
            for name, tbl in conn.execute("SELECT name, tbl_name FROM sqlite_master WHERE type = 'index'")
        }
        return out
    finally:
        conn.close()


def test_a_new_sqlite_store_equals_one_migrated_from_the_first_version(tmp_path):
    from sil_core.store.sqlite import MIGRATIONS

    with open_store(f"sqlite:///{tmp_path / 'new.db'}"):
        pass
    conn = sqlite3.connect(tmp_path / "old.db", isolation_level=None)
    conn.execute("CREATE TABLE sil_schema_version (version INTEGER NOT NULL)")
    conn.execute("INSERT INTO sil_schema_version VALUES (1)")
    for number, script in enumerate(MIGRATIONS, start=1):
        for statement in filter(str.strip, script.split(";")):
            conn.execute(statement)
        conn.execute("UPDATE sil_schema_version SET version = ?", (number,))
    conn.close()
    new, migrated = _sqlite_layout(tmp_path / "new.db"), _sqlite_layout(tmp_path / "old.db")
    assert new == migrated
    assert new["version"] == [(len(MIGRATIONS),)]
    for index in _schema.INDEXES:
        assert new["indexes"][index.name] == (index.table, list(index.columns))


def test_a_released_sqlite_store_gets_the_ts_index_and_keeps_working(tmp_path):
    from sil_core.store.sqlite import MIGRATIONS

    path = tmp_path / "v1.db"
    conn = sqlite3.connect(path)
    conn.executescript(FIXTURE_SQL.read_text(encoding="utf-8"))
    before = {
        "calls": conn.execute("SELECT count(*) FROM sil_calls").fetchone()[0],
        "ids": sorted(r[0] for r in conn.execute("SELECT id FROM sil_calls")),
        "state": conn.execute("SELECT count(*) FROM sil_state").fetchone()[0],
        "kinds": [r[0] for r in conn.execute("SELECT DISTINCT kind FROM sil_state")],
    }
    assert conn.execute("SELECT version FROM sil_schema_version").fetchone()[0] < len(MIGRATIONS)
    assert "sil_calls_ts" not in {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    conn.close()
    with open_store(f"sqlite:///{path}") as store:
        assert store.count_calls() == before["calls"]
        assert sorted(r.id for r in store.read_calls(limit=10_000)) == before["ids"]
        assert sum(len(store.kv_list(kind)) for kind in before["kinds"]) == before["state"]
        target = store.targets()[0]
        n = store.stats(target).n
        assert n > 0
        store.write([CallRecord(f"new-{uuid.uuid4().hex}", target, 1_790_000_000.0, 0.1, Outcome.OK)])
        assert store.stats(target).n == n + 1
        assert store.retain(max_age_s=10.0, now=1_790_000_000.0 + 3600) >= 1
    layout = _sqlite_layout(path)
    assert layout["version"] == [(len(MIGRATIONS),)]
    assert layout["indexes"]["sil_calls_ts"] == ("sil_calls", ["ts"])
    with open_store(f"sqlite:///{path}") as store:  # and again, migrated: nothing to do
        assert store.stats(target).n == n + 1


# -- PostgreSQL --------------------------------------------------------------------------------------
def _pg_layout(conn, schema: str) -> dict:
    out: dict = {"versions": [r[0] for r in conn.execute(
        f'SELECT version FROM "{schema}".sil_schema_version ORDER BY 1')]}
    for table in _schema.TABLES:
        out[table.name] = {r[0]: r[1:] for r in conn.execute(
            "SELECT column_name, data_type, is_nullable, column_default FROM information_schema.columns "
            "WHERE table_schema = %s AND table_name = %s", (schema, table.name))}
    out["indexes"] = {name: definition.replace(f'"{schema}".', "").replace(f"{schema}.", "") for name, definition in
                      conn.execute("SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = %s", (schema,))}
    return out


def test_a_new_postgresql_store_equals_one_migrated_from_the_first_version(pg_schema):
    import psycopg

    from sil_core.store.postgres import MIGRATIONS, quote_ident

    with open_store(f"{PG_BASE}?schema={pg_schema}"):
        pass
    old = f"{pg_schema}_old"
    with psycopg.connect(PG_BASE, autocommit=True) as conn:
        try:
            conn.execute(f"CREATE SCHEMA {quote_ident(old)}")
            conn.execute(f"CREATE TABLE {quote_ident(old)}.sil_schema_version "
                         "(version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())")
            for number, script in enumerate(MIGRATIONS, start=1):
                for statement in filter(str.strip, script.format(schema=quote_ident(old)).split(";")):
                    conn.execute(statement)
                conn.execute(f"INSERT INTO {quote_ident(old)}.sil_schema_version (version) VALUES (%s)", (number,))
            new, migrated = _pg_layout(conn, pg_schema), _pg_layout(conn, old)
        finally:
            conn.execute(f"DROP SCHEMA IF EXISTS {quote_ident(old)} CASCADE")
    assert new == migrated
    assert new["versions"] == list(range(1, len(MIGRATIONS) + 1))
    for index in _schema.INDEXES:
        assert f"({', '.join(index.columns)})" in new["indexes"][index.name]


@pytest.mark.parametrize("dialect", ["sqlite", "postgresql"])
def test_create_statements_name_every_table_and_index(dialect):
    text = "\n".join(_schema.create_statements(dialect))
    for table in _schema.TABLES:
        assert f"CREATE TABLE IF NOT EXISTS {table.name} (" in text
    for index in _schema.INDEXES:
        assert f"CREATE INDEX IF NOT EXISTS {index.name} ON {index.table} " in text
