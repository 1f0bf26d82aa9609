"""The store contract (:class:`sil_core.testing.StoreContract`), run against our four
backends exactly as a third-party store runs it. PostgreSQL skips when the server is
unreachable, except under ``CI=true`` where it must run (``tests/conftest.py``)."""

from __future__ import annotations

import pytest

from sil_core.store import open_store
from sil_core.testing import StoreContract

from ..conftest import PG_BASE


class TestMemoryStore(StoreContract):
    persistent = False  # memory:// does not outlive its process
    shared = False  # each handle is its own store

    def make_store(self, tmp_path):
        return open_store("memory://")


class TestJsonlStore(StoreContract):
    def make_store(self, tmp_path):
        return open_store(f"jsonl:///{tmp_path / 'jsonl'}")


class TestSqliteStore(StoreContract):
    def make_store(self, tmp_path):
        return open_store(f"sqlite:///{tmp_path / 'sil.db'}")


class TestPostgresStore(StoreContract):
    @pytest.fixture(autouse=True)
    def _schema(self, pg_schema):  # skips (fails under CI=true) when PostgreSQL is unreachable
        self.schema = pg_schema

    def make_store(self, tmp_path):
        return open_store(f"{PG_BASE}?schema={self.schema}")


def test_the_contract_module_imports_only_the_standard_library():
    import subprocess
    import sys

    code = (
        "import sys; import sil_core.testing, sil_core.testing.store_contract; "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('pytest', '_pytest', 'psycopg')); "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_store_without_retention_says_so():
    from sil_core.store.base import Store

    class Minimal(StoreContract):
        pass

    with pytest.raises(NotImplementedError, match="make_store"):
        Minimal().make_store(None)
    assert "retain" in vars(Store)
    store = open_store("memory://")
    try:
        assert Store.retain.__doc__ and "retention" in Store.retain.__doc__
        with pytest.raises(NotImplementedError, match="retention"):
            Store.retain(store, max_age_s=1.0)
    finally:
        store.close()
