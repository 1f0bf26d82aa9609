"""What an operator sees: a guard's health, every worker's in `sil status`, decisions on the
sil_core logger by default, and no password in anything printed."""

from __future__ import annotations

import json
import logging
import time

from sil_core import DictConfigAdapter, Guard
from sil_core._internal import after_write as after_write_module
from sil_core.cli import main
from sil_core.store import MemoryStore

from .test_poison import PickyStore


def test_health_counts_what_was_lost_and_whether_the_store_answers():
    g = Guard(PickyStore(), flush_interval=60)
    with g.call("t", context="reject-me"):
        pass
    with g.call("t") as call:
        call.latency_s = float("nan")
    g.flush()
    h = g.health()
    assert (h.written, h.set_aside, h.pending, h.store_reachable) == (1, 1, 0, True)
    assert h.invalid_values.get("call.latency_s", 0) >= 1 and not h.ok
    json.dumps(h.as_dict(), allow_nan=False)
    g.close()

    class Down(MemoryStore):
        def write(self, calls, feedback=()):
            raise ConnectionError("unreachable")

        def kv_get(self, kind, key):
            raise ConnectionError("unreachable")

    g = Guard(Down(), flush_interval=60, exit_timeout=0.5)
    with g.call("t"):
        pass
    g.flush(timeout=1)
    h = g.health()
    assert not h.store_reachable and h.pending == 1 and "unreachable" in h.last_write_error
    g.close(timeout=0.5)


def test_every_workers_health_is_in_sil_status(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(after_write_module, "HEARTBEAT_S", 0.0)
    url = f"sqlite:///{tmp_path / 's.db'}"
    guards = [Guard(url, flush_interval=0.05, worker_id=f"web-{i}") for i in range(2)]
    for g in guards:
        for _ in range(10):
            with g.call("t"):
                pass
    time.sleep(0.5)
    assert main(["status", "--store", url, "--json"]) == 0
    workers = {w["worker_id"]: w for w in json.loads(capsys.readouterr().out)["workers"]}
    assert set(workers) >= {"web-0", "web-1"} and workers["web-0"]["written"] == 10
    assert main(["status", "--store", url]) == 0
    assert "workers (their last health report)" in capsys.readouterr().out
    for _ in range(5):  # written after the last report: a stopped worker's final report counts them
        with guards[0].call("t"):
            pass
    for g in guards:
        g.close()
    assert main(["status", "--store", url, "--json"]) == 0
    workers = {w["worker_id"]: w for w in json.loads(capsys.readouterr().out)["workers"]}
    assert workers["web-0"]["written"] == 15 and workers["web-0"]["stopped"] and workers["web-1"]["stopped"]
    assert main(["status", "--store", url]) == 0
    assert "stopped" in capsys.readouterr().out


def test_decisions_are_logged_by_default(caplog):
    with caplog.at_level(logging.INFO, logger="sil_core"):
        with Guard("memory://", adapter=DictConfigAdapter({"t": {"v": 1}})) as g:
            g.propose("t", {"v": 2})
            g.rollback("t")
            g.drain()
            g.propose("u", {"w": 2}, adapter=DictConfigAdapter({"u": {"w": 1}}))
            g.promote("u")
            g.drain()
    levels = {r.getMessage().split(": ", 2)[1].split(" ")[0]: r.levelno for r in caplog.records
              if r.name == "sil_core" and ("rolled back" in r.getMessage() or "promoted" in r.getMessage())}
    assert levels == {"t": logging.WARNING, "u": logging.INFO}


def test_an_in_memory_adapter_on_a_shared_store_is_warned_about_once(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="sil_core"):
        for _ in range(2):
            Guard(f"sqlite:///{tmp_path / 's.db'}", adapter=DictConfigAdapter({})).close()
        Guard("memory://", adapter=DictConfigAdapter({})).close()  # one process: fine
    assert sum("keeps configs in this process's memory" in r.getMessage() for r in caplog.records) == 1


def test_no_password_in_what_a_guard_prints(pg_schema):
    from ..conftest import PG_BASE

    user = PG_BASE.split("://", 1)[1].split("@", 1)[0]
    url = PG_BASE.replace(f"{user}@", f"{user}:s3cret-pw@") + f"?schema={pg_schema}"
    with Guard(url) as g:
        assert "s3cret-pw" not in repr(g) + repr(g.health()) + json.dumps(g.health().as_dict())
