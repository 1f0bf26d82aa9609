"""Eight processes share one store: they pool their evidence and exactly one acts."""

from __future__ import annotations

import multiprocessing as mp

import pytest

from sil_core import Guard, open_store

from ..conftest import store_url
from ._workers import CountingAdapter, guarded_worker


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_8_processes_one_harmful_change_exactly_one_rollback(backend, tmp_path, request):
    url = store_url(backend, tmp_path, request)
    config = tmp_path / "agent.json"
    config.write_bytes(b'{"prompt": "good", "model": "m1"}\n')
    original = config.read_bytes()
    counter = tmp_path / "rollback_calls.txt"
    counter.touch()
    with Guard(url, adapter=CountingAdapter(config, counter)) as g:
        for i in range(100):  # history on the baseline before the change
            g.record("agent", success=i % 50 != 0, latency_s=0.001)
        change = g.propose("agent", {"prompt": "bad"}, mode="switch")
        assert change.state in ("canary", "switched")
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=guarded_worker, args=(url, str(config), str(counter), 60.0, seed))
             for seed in range(8)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    assert len(counter.read_text().split()) == 1  # exactly one rollback_config call
    with open_store(url) as store:
        events = [e["type"] for e in store.trail_read(target="agent")]
        assert events.count("rollback_succeeded") == 1 and events.count("rollback_started") == 1
        row = store.kv_get("change", change.id)[0]
        assert row["state"] == "rolled_back"
        workers = {e["actor"] for e in store.trail_read(target="agent") if e["type"] == "rollback_succeeded"}
        assert len(workers) == 1
    assert config.read_bytes() == original
