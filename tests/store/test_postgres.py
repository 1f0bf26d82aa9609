"""PostgreSQL backend: what the contract suite cannot show (many processes, retries, lost
connections, schemas). Skipped when the server is unreachable, except under ``CI=true``."""

from __future__ import annotations

import multiprocessing
import subprocess
import sys
import threading
import time
import traceback

import pytest

from sil_core.aggregates import BUCKET_S
from sil_core.errors import ConfigError, MissingExtra, StoreError
from sil_core.records import CallRecord, Feedback, Outcome
from sil_core.store import open_store

from ..conftest import PG_BASE, require_pg

NOW = 1_800_000_000.0
SPAWN = multiprocessing.get_context("spawn")


def rec(call_id: str, *, target: str = "agent", ok: bool = True, ts: float = NOW, duration: float = 0.1,
        version: str | None = "v1", arm: str | None = None) -> CallRecord:
    return CallRecord(
        id=call_id, target=target, ts=ts, duration_s=duration,
        outcome=Outcome.OK if ok else Outcome.ERROR, version=version, arm=arm,
    )


def pg_url(schema: str) -> str:
    return f"{PG_BASE}?schema={schema}"


def admin():
    import psycopg

    return psycopg.connect(PG_BASE, autocommit=True)


# -- worker processes (module level: spawned children import this module) -------------------
def _child(queue, barrier, fn_name, args) -> None:
    try:
        if barrier is not None:
            barrier.wait(timeout=60)
        queue.put(("ok", globals()[fn_name](*args)))
    except BaseException:
        queue.put(("error", traceback.format_exc()))


def run_processes(fn_name: str, args_list: list[tuple], timeout: float = 120) -> list:
    """Run ``fn_name(*args)`` in one spawned process per ``args``, released together."""
    queue = SPAWN.Queue()
    barrier = SPAWN.Barrier(len(args_list))
    procs = [SPAWN.Process(target=_child, args=(queue, barrier, fn_name, args)) for args in args_list]
    for p in procs:
        p.start()
    results, errors = [], []
    deadline = time.monotonic() + timeout
    for _ in procs:
        status, value = queue.get(timeout=max(1.0, deadline - time.monotonic()))
        (results if status == "ok" else errors).append(value)
    for p in procs:
        p.join(timeout=max(1.0, deadline - time.monotonic()))
        if p.is_alive():
            p.kill()
    assert not errors, "\n".join(errors)
    assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]
    return results


def _write_many(url: str, proc: int, threads: int, per_thread: int, batch: int) -> float:
    """``threads`` threads sharing one store, each writing ``per_thread`` records."""
    store = open_store(url)
    errors: list[BaseException] = []

    def work(t: int) -> None:
        try:
            for start in range(0, per_thread, batch):
                store.write([
                    rec(f"p{proc}-t{t}-{i}", ok=i % 4 != 0, ts=NOW + i, duration=0.01 + (i % 7) / 100,
                        version=f"v{t}", arm="baseline" if i % 2 else None)
                    for i in range(start, min(start + batch, per_thread))
                ])
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    started = time.perf_counter()
    pool = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for th in pool:
        th.start()
    for th in pool:
        th.join()
    store.close()
    if errors:
        raise errors[0]
    return time.perf_counter() - started


def _open_only(url: str) -> int:
    store = open_store(url)
    try:
        return store.count_calls()
    finally:
        store.close()


def _write_batch(url: str, ids: list[str]) -> None:
    store = open_store(url)
    try:
        store.write([rec(i) for i in ids])
    finally:
        store.close()


def _send_feedback(url: str, ids: list[str]) -> None:
    store = open_store(url)
    try:
        for i in range(0, len(ids), 10):
            store.write([], [Feedback(x, success=False, score=0.0) for x in ids[i : i + 10]])
    finally:
        store.close()


# -- no server needed --------------------------------------------------------------------------
def test_module_import_does_not_import_psycopg():
    code = "import sys, sil_core.store.postgres, sil_core.store; assert 'psycopg' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_missing_psycopg_raises_missing_extra(monkeypatch):
    from sil_core.store.postgres import PostgresStore

    monkeypatch.setitem(sys.modules, "psycopg", None)  # makes `import psycopg` fail
    with pytest.raises(MissingExtra) as info:
        PostgresStore("postgresql://nobody@127.0.0.1:1/none")
    assert info.value.extra == "postgres" and "sil-guard[postgres]" in str(info.value)


def test_url_schema_parameter_is_stripped_and_password_redacted():
    from sil_core.store.postgres import redact, split_url

    conninfo, schema = split_url("postgresql+psycopg://u:secret@h:5433/db?sslmode=require&schema=my%20s&options=-c%20a%3Db")
    assert schema == "my s"
    assert conninfo == "postgresql://u:secret@h:5433/db?sslmode=require&options=-c%20a%3Db"
    assert split_url("postgres://h/db") == ("postgresql://h/db", None)
    assert redact("postgresql://u:secret@h/db?schema=x") == "postgresql://u:***@h/db?schema=x"
    assert redact("postgresql://u@h/db") == "postgresql://u@h/db"
    with pytest.raises(ConfigError):
        split_url("mysql://h/db")


# -- with a server --------------------------------------------------------------------------
def test_unreachable_server_raises_store_error():
    require_pg()  # psycopg must be importable; the server itself is not used
    from sil_core.store.postgres import PostgresStore

    started = time.monotonic()
    # the store opens degraded (a web worker must boot); its operations raise StoreError
    store = PostgresStore("postgresql://postgres:pw@127.0.0.1:1/test", connect_timeout=2)
    try:
        with pytest.raises(StoreError) as info:
            store.count_calls()
    finally:
        store.close()
    assert time.monotonic() - started < 10
    assert "pw" not in str(info.value) and info.value.__cause__ is not None


def test_tables_live_in_the_named_schema(pg_schema):
    from sil_core.store.postgres import MIGRATIONS, PostgresStore

    with open_store(pg_url(pg_schema)) as store:
        assert isinstance(store, PostgresStore) and store.schema == pg_schema
        store.write([rec("a")])
    with admin() as conn:
        tables = {r[0] for r in conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = %s", (pg_schema,))}
        assert tables == {"sil_calls", "sil_cells", "sil_hist", "sil_schema_version", "sil_state", "sil_trail",
                          "sil_pending_feedback", "sil_metrics"}
        versions = [r[0] for r in conn.execute(f'SELECT version FROM "{pg_schema}".sil_schema_version ORDER BY 1')]
        assert versions == list(range(1, len(MIGRATIONS) + 1))
        assert conn.execute(f'SELECT count(*) FROM "{pg_schema}".sil_calls').fetchone()[0] == 1
    # the keyword argument names the schema too; reopening migrates nothing
    from sil_core.store.postgres import PostgresStore as PS

    with PS(PG_BASE, schema=pg_schema) as again:
        assert again.count_calls() == 1 and again.targets() == ["agent"]


def test_retried_batch_is_not_double_counted(pg_schema):
    url = pg_url(pg_schema)
    with open_store(url) as store:
        batch = [rec(f"id-{i}", ok=i % 5 != 0) for i in range(50)]
        store.write(batch)
        store.write(batch)  # the flusher retried after a timeout
        store.write(batch[40:] + [rec(f"id-{i}") for i in range(50, 60)])  # overlapping batch
        store.write([rec("dup"), rec("dup")])  # the same id twice in one batch
        s = store.stats("agent")
        assert (s.n, s.successes, s.failures) == (61, 51, 10)
        assert store.count_calls() == 61
        assert sum(c.n for c in store.cells("agent", since_hour=int(NOW // BUCKET_S)).values()) == 61
        # a retried feedback batch changes nothing the second time
        fb = [Feedback("id-1", success=False), Feedback("id-0", success=True, score=1.0)]
        store.write([], fb)
        store.write([], fb)
        s = store.stats("agent")
        assert (s.n, s.successes, s.failures, s.score_n) == (61, 51, 10, 1)
        # several pieces of feedback for one call in one batch: the last one wins
        store.write([], [Feedback("id-2", success=False), Feedback("id-2", success=True), Feedback("id-2", success=False)])
        s = store.stats("agent")
        assert (s.successes, s.failures) == (50, 11)
        assert store.get_call("id-2").feedback_success is False


def test_concurrent_identical_batches_count_once(pg_schema):
    url = pg_url(pg_schema)
    ids = [f"same-{i}" for i in range(300)]
    run_processes("_write_batch", [(url, ids), (url, ids[::-1]), (url, ids[100:]), (url, ids[:200])])
    with open_store(url) as store:
        assert store.count_calls() == 300
        assert store.stats("agent").n == 300 and store.stats("agent", since=NOW - 1).n == 300


def test_concurrent_feedback_applies_once(pg_schema):
    url = pg_url(pg_schema)
    ids = [f"fb-{i}" for i in range(100)]
    with open_store(url) as store:
        store.write([rec(i) for i in ids])
    run_processes("_send_feedback", [(url, ids), (url, ids[::-1]), (url, ids), (url, ids[50:])])
    with open_store(url) as store:
        s = store.stats("agent")
        assert (s.n, s.successes, s.failures, s.score_n, s.score_mean) == (100, 0, 100, 100, 0.0)
        assert store.stats("agent", since=NOW - 1).failures == 100


def test_four_processes_two_threads_each(pg_schema):
    """4 processes x 2 threads x 2,000 records, one record per write: nothing lost or doubled."""
    url = pg_url(pg_schema)
    with open_store(url):
        pass  # create the schema first so that the timing below measures writes only
    started = time.perf_counter()
    run_processes("_write_many", [(url, p, 2, 2000, 1) for p in range(4)], timeout=110)
    elapsed = time.perf_counter() - started
    print(f"\n16,000 single-record writes from 4 processes x 2 threads: {elapsed:.1f} s")
    with open_store(url) as store:
        assert store.count_calls() == 16_000
        assert len(store.read_calls("agent", limit=20_000)) == 16_000
        s = store.stats("agent")
        assert s.n == 16_000
        assert (s.successes, s.failures) == (12_000, 4_000)
        assert sum(c.n for c in store.cells("agent", since_hour=0).values()) == 16_000
        assert {k: c.n for k, c in store.cells("agent").items()} == {
            ("v0", ""): 4_000, ("v0", "baseline"): 4_000, ("v1", ""): 4_000, ("v1", "baseline"): 4_000,
        }
        assert sum(sum(c.hist.values()) for c in store.cells("agent").values()) == 12_000
    assert elapsed < 60


def test_migrations_run_concurrently(pg_schema):
    from sil_core.store.postgres import MIGRATIONS

    url = pg_url(pg_schema)
    assert run_processes("_open_only", [(url,)] * 6) == [0] * 6
    with admin() as conn:
        versions = [r[0] for r in conn.execute(f'SELECT version FROM "{pg_schema}".sil_schema_version ORDER BY 1')]
    assert versions == list(range(1, len(MIGRATIONS) + 1))


def test_lost_connection_is_recovered(pg_schema):
    with open_store(pg_url(pg_schema)) as store:
        store.write([rec("a")])
        for _ in range(2):
            pid = store._run("pid", lambda conn: conn.execute("SELECT pg_backend_pid()").fetchone()[0])
            with admin() as conn:
                assert conn.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone()[0]
            time.sleep(0.1)
            assert store.stats("agent").n >= 1  # reconnects transparently
        pid = store._run("pid", lambda conn: conn.execute("SELECT pg_backend_pid()").fetchone()[0])
        with admin() as conn:
            conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
        time.sleep(0.1)
        store.write([rec("b"), rec("a")])  # a write after the loss is not lost or doubled
        assert store.stats("agent").n == 2 and store.count_calls() == 2


def test_connection_that_cannot_come_back_raises_store_error(pg_schema):
    store = open_store(pg_url(pg_schema))
    try:
        store._conninfo = "postgresql://postgres@127.0.0.1:1/test"  # the server "moved away"
        pid = store._run("pid", lambda conn: conn.execute("SELECT pg_backend_pid()").fetchone()[0])
        with admin() as conn:
            conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
        time.sleep(0.1)
        with pytest.raises(StoreError):
            store.count_calls()
    finally:
        store.close()
    with pytest.raises(StoreError):
        store.count_calls()  # closed


def test_driver_errors_become_store_errors(pg_schema):
    with open_store(pg_url(pg_schema)) as store:
        with pytest.raises(StoreError) as info:
            store._query("bad", "SELECT * FROM no_such_table")
        assert info.value.__cause__ is not None
        store.write([rec("ok")])  # the connection is still usable
        assert store.count_calls() == 1


def test_text_postgres_rejects_is_cleaned(pg_schema):
    with open_store(pg_url(pg_schema)) as store:
        r = CallRecord(id="nul", target="agent", ts=NOW, duration_s=0.1, outcome=Outcome.ERROR,
                       error_type="E", error_message="a\x00b \ud800", context='{"k":"\\u0000"}')
        store.write([r])
        got = store.get_call("nul")
        assert got.error_message == "a\ufffdb ?" and got.context_value() == {"k": "\x00"}


def test_threads_share_one_store(pg_schema):
    with open_store(pg_url(pg_schema)) as store:
        errors: list[BaseException] = []

        def writer(t: int) -> None:
            try:
                for i in range(100):
                    store.write([rec(f"t{t}-{i}", ts=NOW + i)])
            except BaseException as exc:
                errors.append(exc)

        def reader() -> None:
            try:
                for _ in range(100):
                    store.stats("agent")
                    store.read_calls("agent", limit=10)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=writer, args=(t,)) for t in range(4)] + [threading.Thread(target=reader)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        assert not errors
        assert store.stats("agent").n == 400 and store.count_calls() == 400


def test_retention_prunes_old_hours_but_not_all_time(pg_schema):
    now = NOW
    with open_store(pg_url(pg_schema)) as store:
        store.write([rec(f"old-{i}", ts=now - 3 * 86400) for i in range(5)] + [rec(f"new-{i}", ts=now - i) for i in range(5)])
        store.write([rec("b-1", target="b", ts=now)])
        assert store.retain(max_age_s=86400, now=now) == 5
        assert store.stats("agent").n == 10  # all-time cells keep the evidence
        assert sum(c.n for c in store.cells("agent", since_hour=0).values()) == 5  # old hours are gone
        assert store.retain(max_calls=1, now=now) == 4
        assert [r.id for r in store.read_calls()] == ["b-1", "new-0"]  # same ts: id order
        assert store.targets() == ["agent", "b"]
        assert store.retain(max_calls=0, now=now) == 2 and store.count_calls() == 0
