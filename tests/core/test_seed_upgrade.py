"""A seed user upgrades: the same ``SelfImprovingLoop(data_dir)`` finds the history the seed
wrote there (its ``traces.jsonl`` kept in the seed's line format, or its SQLite table
imported once), and the seed can still read its file."""

from __future__ import annotations

import pytest
import self_improving_loop

import sil_core


@pytest.mark.parametrize("storage", ["jsonl", "sqlite"])
def test_an_upgraded_loop_keeps_the_seeds_history(storage, tmp_path):
    seed = self_improving_loop.SelfImprovingLoop(data_dir=str(tmp_path), storage=storage)
    for i in range(6):
        seed.execute_with_improvement("writer", f"old task {i}", (lambda: "ok") if i % 3 else _fail)
    loop = sil_core.SelfImprovingLoop(data_dir=str(tmp_path), storage=storage)
    try:
        stats = loop.guard.stats("writer")
        assert (stats.n, stats.failures) == (6, 2)  # the seed's calls, counted once
        for i in range(4):
            loop.execute_with_improvement("writer", f"new task {i}", lambda: "ok")
        stats = loop.guard.stats("writer")
        assert (stats.n, stats.failures) == (10, 2)
    finally:
        loop.close()
    assert not (tmp_path / "calls.jsonl").exists() and not (tmp_path / "sil.sqlite3").exists()
    reader = self_improving_loop.SelfImprovingLoop(data_dir=str(tmp_path), storage=storage)  # the seed again
    tasks = [t["task"] for t in reader._load_traces("writer")]
    old, new = [f"old task {i}" for i in range(6)], [f"new task {i}" for i in range(4)]
    # JSONL: one file in the seed's line format; SQLite: the seed's table is imported and left as it was
    assert tasks == (old + new if storage == "jsonl" else old)
    reopened = sil_core.SelfImprovingLoop(data_dir=str(tmp_path), storage=storage)
    try:
        assert reopened.guard.stats("writer").n == 10  # never imported twice
    finally:
        reopened.close()


def test_a_fresh_folder_gets_the_sil_store(tmp_path):
    loop = sil_core.SelfImprovingLoop(data_dir=str(tmp_path))
    loop.execute_with_improvement("writer", "task", lambda: "ok")
    loop.close()
    assert (tmp_path / "calls.jsonl").exists() and not (tmp_path / "traces.jsonl").exists()


def _fail():
    raise RuntimeError("boom")
