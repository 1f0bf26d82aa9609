"""Shared fixtures: a store of every backend, and the PostgreSQL server when reachable."""

from __future__ import annotations

import os
import uuid

import pytest

PG_BASE = os.environ.get("SIL_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
BACKENDS = ("memory", "jsonl", "sqlite", "postgresql")


def pg_reason() -> str | None:
    """``None`` when PostgreSQL is usable for tests, else why not."""
    try:
        import psycopg
    except ImportError:
        return "psycopg is not installed (pip install 'sil-guard[postgres]')"
    try:
        with psycopg.connect(PG_BASE, connect_timeout=3):
            return None
    except Exception as exc:  # any connection failure means: skip (or fail under CI)
        return f"PostgreSQL at {PG_BASE} is not reachable: {exc}"


def require_pg() -> None:
    """Skip the test when PostgreSQL is unreachable, except under CI where it must run."""
    reason = pg_reason()
    if reason is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true requires PostgreSQL: {reason}")
    pytest.skip(reason)


@pytest.fixture
def pg_schema():
    """A fresh PostgreSQL schema name, dropped after the test."""
    require_pg()
    import psycopg

    name = f"sil_test_{uuid.uuid4().hex[:12]}"
    yield name
    with psycopg.connect(PG_BASE, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


def store_url(backend: str, tmp_path, request) -> str:
    if backend == "memory":
        return "memory://"
    if backend == "jsonl":
        return f"jsonl:///{tmp_path / 'jsonl'}"
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'sil.db'}"
    schema = request.getfixturevalue("pg_schema")
    return f"{PG_BASE}?schema={schema}"


@pytest.fixture(params=BACKENDS)
def backend(request) -> str:
    return request.param


@pytest.fixture
def url(backend, tmp_path, request) -> str:
    """A URL for an empty store of each backend."""
    return store_url(backend, tmp_path, request)


@pytest.fixture
def store(url):
    from sil_core.store import open_store

    s = open_store(url)
    yield s
    s.close()
