"""Opening stores: many workers opening a fresh store at the same instant (every
multi-worker server's first start), and where a file-based store may create folders."""

from __future__ import annotations

import multiprocessing as mp
import os
import uuid

import pytest

from sil_core import ConfigError, Guard
from sil_core.store import open_store

from ..conftest import PG_BASE, require_pg

PROCESSES, ROUNDS = 8, 40


def _open_fresh(urls: list[str], barrier, failures) -> None:
    for url in urls:
        barrier.wait(timeout=60)  # every process opens the same fresh store at the same instant
        try:
            Guard(url).close()
        except Exception as exc:  # counted: the test asserts there are none
            failures.put(f"{url}: {exc!r}")


def _race(urls: list[str]) -> list[str]:
    ctx = mp.get_context("fork")
    barrier, failures = ctx.Barrier(PROCESSES), ctx.Queue()
    procs = [ctx.Process(target=_open_fresh, args=(urls, barrier, failures)) for _ in range(PROCESSES)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(300)
        assert p.exitcode == 0
    out = []
    while not failures.empty():
        out.append(failures.get())
    return out


def test_8_processes_open_40_fresh_sqlite_files_at_once_without_a_failure(tmp_path):
    urls = [f"sqlite:///{tmp_path / f'fresh-{i}.db'}" for i in range(ROUNDS)]
    assert _race(urls) == []
    for url in urls:
        with open_store(url) as store:
            store.kv_put("k", "v", {"ok": 1}, expect_rev=0)  # a usable store with its schema
            assert store.count_calls() == 0


def test_8_processes_create_the_same_fresh_postgresql_schemas_at_once():
    require_pg()
    import psycopg

    names = [f"sil_fresh_{uuid.uuid4().hex[:10]}" for _ in range(10)]
    try:
        assert _race([f"{PG_BASE}?schema={name}" for name in names]) == []
        with open_store(f"{PG_BASE}?schema={names[0]}") as store:
            assert store.count_calls() == 0
    finally:
        with psycopg.connect(PG_BASE, autocommit=True) as conn:
            for name in names:
                conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


def test_a_sqlite_file_is_created_only_in_an_existing_folder(tmp_path):
    open_store(f"sqlite:///{tmp_path / 'here.db'}").close()
    assert (tmp_path / "here.db").exists()
    with pytest.raises(ConfigError, match="does not exist"):
        open_store(f"sqlite:///{tmp_path / 'no' / 'such' / 'folder' / 'x.db'}")
    assert not (tmp_path / "no").exists()
    with pytest.raises(ConfigError, match="does not exist"):
        Guard(f"sqlite:///{tmp_path / 'typo-dir' / 'x.db'}")


def test_a_slash_level_typo_creates_nothing():
    folder = f"/sil-guard-test-{uuid.uuid4().hex[:8]}"
    with pytest.raises(ConfigError):
        open_store(f"sqlite:///{folder}/sil.db")
    assert not os.path.exists(folder)


def test_the_default_data_folder_is_created_on_first_use(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("SIL_STORE", raising=False)
    monkeypatch.delenv("HERMES_HOME", raising=False)  # no Hermes in use (see default_store_source)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    with Guard() as g:
        g.record("t", success=True, latency_s=0.1)
    assert (tmp_path / "xdg" / "sil-guard" / "sil.db").exists()


def test_a_jsonl_folder_needs_an_existing_parent(tmp_path):
    open_store(f"jsonl:///{tmp_path / 'store'}").close()
    assert (tmp_path / "store").is_dir()
    with pytest.raises(ConfigError, match="does not exist"):
        open_store(f"jsonl:///{tmp_path / 'missing' / 'store'}")
