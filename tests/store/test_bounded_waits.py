"""No store operation waits forever, and a PostgreSQL store that is down at startup does
not take the service down: it starts degraded and catches up once the server is back."""

from __future__ import annotations

import logging
import multiprocessing
import os
import socket
import sqlite3
import threading
import time
from urllib.parse import urlsplit

import pytest

from sil_core import Guard
from sil_core.errors import ConfigError, StoreError
from sil_core.records import CallRecord, Outcome
from sil_core.store import open_store

from ..conftest import PG_BASE, require_pg

NOW = (time.time() // 3600 - 1) * 3600 + 1800.0
SPAWN = multiprocessing.get_context("spawn")


def rec(i: int) -> CallRecord:
    return CallRecord(f"id-{i}", "agent", NOW, 0.1, Outcome.OK, version="v1")


# -- a lock held by another process ---------------------------------------------------------------
def _hold(kind: str, where: str, ready, release) -> None:
    """Take a lock ``kind`` on ``where`` and keep it until ``release`` is set."""
    if kind == "sqlite":
        conn = sqlite3.connect(where, isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")
        ready.set()
        release.wait(60)
        conn.execute("ROLLBACK")
    elif kind == "jsonl":
        import fcntl

        fd = os.open(where, os.O_RDWR)
        fcntl.flock(fd, fcntl.LOCK_EX)
        ready.set()
        release.wait(60)
        fcntl.flock(fd, fcntl.LOCK_UN)
    else:
        import psycopg

        with psycopg.connect(PG_BASE) as conn:  # a transaction, open until released
            conn.execute(f'LOCK TABLE "{where}".sil_calls IN ACCESS EXCLUSIVE MODE')
            ready.set()
            release.wait(60)
            conn.rollback()


class Holder:
    """Another process holding a lock for the duration of a ``with`` block."""

    def __init__(self, kind: str, where: str) -> None:
        self.ready, self.release = SPAWN.Event(), SPAWN.Event()
        self.proc = SPAWN.Process(target=_hold, args=(kind, where, self.ready, self.release))

    def __enter__(self) -> "Holder":
        self.proc.start()
        assert self.ready.wait(30), "the lock holder did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        self.proc.join(30)


def assert_times_out(fn, limit: float) -> StoreError:
    started = time.monotonic()
    with pytest.raises(StoreError) as info:
        fn()
    elapsed = time.monotonic() - started
    assert elapsed < limit, f"waited {elapsed:.1f} s"
    return info.value


def test_sqlite_waits_at_most_busy_timeout_which_defaults_to_10_s(tmp_path):
    from sil_core.store.sqlite import SqliteStore

    path = tmp_path / "sil.db"
    with SqliteStore(path) as store:
        assert store._query("PRAGMA busy_timeout") == [(10_000,)]
    store = SqliteStore(path, busy_timeout_s=0.3)
    try:
        with Holder("sqlite", str(path)):
            assert_times_out(lambda: store.write([rec(1)]), 3.0)
            assert store.count_calls() == 0  # reads do not wait (WAL)
        store.write([rec(1)])
        assert store.count_calls() == 1
    finally:
        store.close()


def test_jsonl_waits_for_its_file_lock_at_most_lock_timeout(tmp_path):
    from sil_core.store.jsonl import JsonlStore

    store = JsonlStore(tmp_path / "store", lock_timeout_s=0.3, fsync=False)
    try:
        assert JsonlStore(tmp_path / "other").lock_timeout_s == 10.0
        store.write([rec(1)])
        with Holder("jsonl", str(store.lock_path)):
            error = assert_times_out(lambda: store.write([rec(2)]), 3.0)
            assert isinstance(error.__cause__, TimeoutError) and "held by another process" in str(error)
            assert_times_out(lambda: store.read_calls(), 3.0)  # a read waits for the shared lock
            assert store.stats("agent").n == 1  # statistics need no file lock
        store.write([rec(2)])
        assert store.count_calls() == 2 and store.stats("agent").n == 2
    finally:
        store.close()
    with pytest.raises(ConfigError):
        JsonlStore(tmp_path / "bad", lock_timeout_s=0)


def test_postgresql_lock_and_statement_timeouts(pg_schema):
    from sil_core.store.postgres import PostgresStore

    url = f"{PG_BASE}?schema={pg_schema}"
    with open_store(url) as store:  # the defaults, set on the connection
        show = lambda conn: [conn.execute(f"SHOW {name}").fetchone()[0] for name in ("lock_timeout", "statement_timeout")]
        assert store._run("show", show) == ["10s", "10s"]
        store.write([rec(1)])
    store = PostgresStore(url, lock_timeout_s=0.3, statement_timeout_s=0.5)
    try:
        with Holder("postgresql", pg_schema):
            error = assert_times_out(lambda: store.write([rec(2)]), 3.0)
            assert type(error.__cause__).__name__ == "LockNotAvailable"
        error = assert_times_out(lambda: store._query("sleep", "SELECT pg_sleep(5)"), 3.0)
        assert type(error.__cause__).__name__ == "QueryCanceled"
        store.write([rec(2)])  # the connection is still usable
        assert store.count_calls() == 2
    finally:
        store.close()
    with PostgresStore(url, lock_timeout_s=None, statement_timeout_s=None) as store:  # the server's own
        assert store._run("show", show) == ["0", "0"]


def test_a_malformed_postgresql_url_is_refused_at_once():
    require_pg()  # psycopg must be importable; no server is used
    from sil_core.store.postgres import PostgresStore

    started = time.monotonic()
    with pytest.raises(ConfigError, match="nonsense"):
        PostgresStore("postgresql://postgres:pw@127.0.0.1:1/test?nonsense=1")
    with pytest.raises(ConfigError):
        open_store("mysql://127.0.0.1/test")
    with pytest.raises(ConfigError):
        PostgresStore("postgresql://postgres@127.0.0.1:1/test", lock_timeout_s=-1)
    assert time.monotonic() - started < 2


# -- a server that is down at startup -------------------------------------------------------------
class DelayedProxy:
    """A TCP proxy to ``upstream`` that listens at once but, for its first ``delay`` seconds,
    closes every connection it accepts (a server that is down)."""

    def __init__(self, upstream: tuple[str, int], delay: float) -> None:
        self.upstream = upstream
        self.ready_at = time.monotonic() + delay
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.listener.settimeout(0.1)
        self.port = self.listener.getsockname()[1]
        self.refused = 0
        self.forwarded = 0
        self._sockets: list[socket.socket] = []
        self._closed = False
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while not self._closed:
            try:
                client, _ = self.listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            if time.monotonic() < self.ready_at:
                self.refused += 1
                client.close()
                continue
            try:
                server = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                client.close()
                continue
            self.forwarded += 1
            client.settimeout(None)
            server.settimeout(None)
            self._sockets += [client, server]
            for src, dst in ((client, server), (server, client)):
                threading.Thread(target=self._pipe, args=(src, dst), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self) -> None:
        self._closed = True
        self.listener.close()
        for s in self._sockets:
            try:
                s.close()
            except OSError:
                pass


def test_a_guard_starts_while_postgresql_is_down_and_every_record_lands(pg_schema, caplog):
    parts = urlsplit(PG_BASE)
    proxy = DelayedProxy((parts.hostname or "127.0.0.1", parts.port or 5432), delay=2.0)
    try:
        netloc = f"{parts.username + '@' if parts.username else ''}127.0.0.1:{proxy.port}"
        url = parts._replace(netloc=netloc).geturl() + f"?schema={pg_schema}"
        caplog.set_level(logging.INFO, logger="sil_core")
        started = time.monotonic()
        guard = Guard(url)  # the server is down: the guard starts anyway
        assert time.monotonic() - started < 2.0 and proxy.refused >= 1
        for i in range(50):
            guard.record("agent", success=i % 5 != 0, latency_s=0.01 * (1 + i % 3))
        assert guard.flush(timeout=1) is False  # still down: the records wait in memory
        deadline = time.monotonic() + 30
        while not guard.flush(timeout=5):
            assert time.monotonic() < deadline, "the records never landed"
            time.sleep(0.1)
        guard.close()
        assert proxy.forwarded >= 1
    finally:
        proxy.close()
    with open_store(f"{PG_BASE}?schema={pg_schema}") as store:
        s = store.stats("agent")
        assert store.count_calls() == 50 and (s.n, s.successes, s.failures) == (50, 40, 10)
    # said once when it became unreachable, once when it came back (the writer's own
    # rate-limited error reports aside)
    said = [r.getMessage() for r in caplog.records
            if r.name == "sil_core" and r.getMessage().startswith("sil-guard: the PostgreSQL store")]
    assert [m.rsplit(" ", 2)[-2:] == ["reachable", "again"] for m in said] == [False, True], said
    assert "is unreachable" in said[0]
