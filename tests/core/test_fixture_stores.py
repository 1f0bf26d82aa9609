"""Stores written by an earlier release (``tests/fixtures/v1``, written by commit 88accc1,
before change rows had a ``format``) open, read and verify their trail with today's code."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sqlite3
from pathlib import Path

import pytest

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "v1"
EXPECTED = json.loads((FIXTURES / "expected.json").read_text())


def _facts():
    spec = importlib.util.spec_from_file_location("make_v1_stores", FIXTURES.parent / "make_v1_stores.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.facts


def _url(kind: str, tmp_path: Path) -> str:
    if kind == "sqlite":
        db = tmp_path / "store.db"
        with sqlite3.connect(db) as conn:
            conn.executescript((FIXTURES / "sqlite.sql").read_text())
        return f"sqlite:///{db}"
    shutil.copytree(FIXTURES / "jsonl", tmp_path / "jsonl")
    return f"jsonl:///{tmp_path / 'jsonl'}"


def _as_today(expected: dict) -> dict:
    """What today's code should read: the same, except that a switch-mode change in flight,
    stored in state "canary" before the "switched" state existed, reads as "switched"."""
    out = json.loads(json.dumps(expected))
    for change in out["changes"]:
        if change["state"] == "canary" and change["mode"] == "switch":
            change["state"] = "switched"
    return out


@pytest.mark.parametrize("kind", ["sqlite", "jsonl"])
def test_a_store_written_by_the_previous_release_reads_the_same(kind, tmp_path):
    got = _facts()(_url(kind, tmp_path))
    want = _as_today(EXPECTED[kind])
    for target, stats in want["stats"].items():
        assert got["stats"][target]["score_mean"] == pytest.approx(stats.pop("score_mean"))
        got["stats"][target].pop("score_mean")
    assert got["changes"] == want["changes"]
    assert got["stats"] == want["stats"] and got["versions"] == want["versions"] and got["route"] == want["route"]
    assert got["trail"] == want["trail"] and got["trail"]["ok"]


@pytest.mark.parametrize("kind", ["sqlite", "jsonl"])
def test_a_store_written_by_the_previous_release_keeps_working(kind, tmp_path):
    """The change in flight (an old-format row) is judged and rolled back, the planner's
    change waiting for approval starts, and the trail still verifies, old events and new."""
    from sil_core import DictConfigAdapter, Guard, RolloutPolicy

    url = _url(kind, tmp_path)
    adapter = DictConfigAdapter({"critic": {"temperature": 0.7}, "planner": {"steps": 3}})
    with Guard(url, adapter=adapter, policy=RolloutPolicy(min_calls=10, tripwire_consecutive=3),
               refresh_interval=0, handle_sigterm=False) as g:
        assert g.change("critic").state == "switched"
        for _ in range(6):
            try:
                with g.call("critic"):
                    raise RuntimeError("the new temperature breaks it")
            except RuntimeError:
                pass
        g.drain()
        g.evaluate("critic")
        assert g.change("critic").state == "rolled_back"
        assert adapter.configs["critic"] == {"temperature": 0.2}
        assert g.approve("planner").state == "canary"
        report = g.verify_trail()
        assert report.ok and report.events == EXPECTED[kind]["trail"]["events"] + 3
        assert [e["type"] for e in g.trail()][-3:] == ["rollback_started", "rollback_succeeded", "change_applied"]
        rows = [c for c in g.changes() if c.target == "critic"]
        assert rows[-1].state == "rolled_back"
