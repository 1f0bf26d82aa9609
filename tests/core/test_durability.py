"""Many processes, and a writer killed with SIGKILL: what reaches the store.

These run through the Guard end to end (write-behind queue, flusher thread, store).
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from sil_core import Guard, open_store

from ..conftest import store_url

DURABLE_BACKENDS = ("jsonl", "sqlite", "postgresql")


def _worker(url: str, proc: int, n: int) -> None:
    guard = Guard(url, flush_interval=0.05)

    @guard.track("shared")
    def call(i):
        if i % 10 == 0:
            raise ValueError(i)
        return i

    def run(thread: int) -> None:
        for i in range(n):
            try:
                call(i)
            except ValueError:
                pass

    threads = [threading.Thread(target=run, args=(t,)) for t in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    guard.close()


@pytest.mark.parametrize("backend", DURABLE_BACKENDS)
def test_4_processes_x_2_threads_x_2000_records(backend, tmp_path, request):
    url = store_url(backend, tmp_path, request)
    open_store(url).close()  # create the schema once, as a deployment would
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_worker, args=(url, p, 2000)) for p in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    with open_store(url) as store:
        assert store.count_calls("shared") == 16_000
        rows = store.read_calls("shared", limit=20_000)
        assert len(rows) == 16_000 and len({r.id for r in rows}) == 16_000
        s = store.stats("shared")
        assert (s.n, s.failures) == (16_000, 1_600)


_CRASH_CHILD = textwrap.dedent(
    """
    import sys, time
    from sil_core import Guard
    url, durability = sys.argv[1], sys.argv[2]
    guard = Guard(url, durability=durability, flush_interval=0.2)
    ctx = {"note": "x" * 200}
    i = 0
    while True:
        with guard.call("crash", context=ctx):
            time.sleep(0.0002)  # an agent does some work per call
        i += 1
        if i % 50 == 0:
            print(i, flush=True)   # calls that have returned so far
    """
)


def _run_and_kill(url: str, durability: str, seconds: float) -> int:
    child = subprocess.Popen([sys.executable, "-c", _CRASH_CHILD, url, durability],
                             stdout=subprocess.PIPE, text=True)
    returned = 0
    deadline = time.time() + seconds
    try:
        for line in child.stdout:
            returned = int(line)
            if time.time() >= deadline:
                break
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    # lines printed after our last read are calls that returned too
    rest = child.stdout.read().split()
    child.stdout.close()
    return int(rest[-1]) if rest else returned


@pytest.mark.parametrize("durability", ["sync", "batched"])
@pytest.mark.parametrize("backend", DURABLE_BACKENDS)
def test_sigkill_mid_stream(backend, durability, tmp_path, request, record_property):
    url = store_url(backend, tmp_path, request)
    open_store(url).close()
    t0 = time.time()
    returned = _run_and_kill(url, durability, seconds=1.5)
    elapsed = time.time() - t0
    assert returned > 0
    with open_store(url) as store:  # the store opens
        rows = store.read_calls("crash", limit=10**7)
        stored = len(rows)
        for r in rows:  # no corrupt record comes back
            assert r.outcome == "ok" and r.context_value() == {"note": "x" * 200}
        assert store.stats("crash").n == stored
    lost = max(0, returned - stored)
    rate = returned / max(elapsed, 1e-3)
    report = {"backend": backend, "durability": durability, "returned": returned, "stored": stored,
              "lost": lost, "calls_per_s": round(rate)}
    record_property("crash", json.dumps(report))
    print("crash:", json.dumps(report))
    if durability == "sync":
        assert lost == 0  # every call that returned was durable
    else:
        # at most one flush interval (0.2 s) of calls, plus the batch being written
        assert lost <= rate * 0.5 + 1000


def _forked_child(guard: Guard) -> None:
    for _ in range(100):
        guard.record("forked", success=True, latency_s=0.01)
    guard.close()


@pytest.mark.parametrize("backend", DURABLE_BACKENDS)
def test_a_guard_survives_fork(backend, tmp_path, request):
    """A guard made before a fork (gunicorn --preload style) works in the child."""
    guard = Guard(store_url(backend, tmp_path, request), flush_interval=0.05)
    for _ in range(10):
        guard.record("forked", success=True, latency_s=0.01)
    child = mp.get_context("fork").Process(target=_forked_child, args=(guard,))
    child.start()
    child.join(60)
    assert child.exitcode == 0
    for _ in range(10):
        guard.record("forked", success=False, latency_s=0.01)
    s = guard.stats("forked")
    assert (s.n, s.failures) == (120, 10)
    guard.close()
