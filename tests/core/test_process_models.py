"""Every process model a user deploys: what a normal exit leaves in the store.

Each test records a known number of calls and never calls ``guard.close()``; the process
then ends the way that model ends it (interpreter exit, a multiprocessing child returning,
a pool shut down, a server stopped gracefully). Exactly that many records must be stored:
none lost, none twice (``count_calls``, ``read_calls`` and distinct ids all agree).
Every Guard here flushes only every 30 s (``FLUSH_S``), so what is stored was written by
the exit path, not by a periodic flush that happened to run before the process ended.
The last test checks that the exit drain is bounded when the store is locked.
"""

from __future__ import annotations

import concurrent.futures
import importlib.util
import json
import multiprocessing as mp
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from sil_core import Guard, open_store

from ..conftest import store_url
from . import _procmodel_workers as workers
from ._procmodel_workers import FLUSH_S

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="process models with fork need a POSIX system")

BACKENDS = ("sqlite", "postgresql")
REPO = Path(__file__).resolve().parents[2]
CHILDREN, PER_CHILD = 4, 150  # 600 records per multiprocessing model
REQUESTS = 200  # per server run


# -- helpers ------------------------------------------------------------------------------
def _url(backend: str, tmp_path, request) -> str:
    url = store_url(backend, tmp_path, request)
    open_store(url).close()  # the schema exists before the workers start, as in a deployment
    return url


def assert_stored_exactly(url: str, target: str, expected: int, record_property=None, detail: str = "") -> None:
    """``expected`` records of ``target`` are in the store: no loss, no duplicate."""
    with open_store(url) as store:
        counted = store.count_calls(target)
        rows = store.read_calls(target, limit=expected * 2 + 100)
    ids = len({r.id for r in rows})
    numbers = {"target": target, "expected": expected, "count_calls": counted, "read_calls": len(rows),
               "distinct_ids": ids, "lost": expected - ids}
    print("procmodel:", json.dumps(numbers))
    if record_property is not None:
        record_property("procmodel", json.dumps(numbers))
    assert (counted, len(rows), ids) == (expected, expected, expected), (
        f"{target}: {expected} calls recorded, the store holds count_calls={counted}, "
        f"read_calls={len(rows)}, distinct ids={ids}" + (f"\n{detail}" if detail else "")
    )


def _env(**extra: str) -> dict:
    env = dict(os.environ)
    env.pop("SIL_STORE", None)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


def _run_py(code: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          timeout=timeout, env=_env())


def _join_all(procs, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    try:
        for p in procs:
            p.join(max(0.1, deadline - time.monotonic()))
        codes = [p.exitcode for p in procs]
        assert codes == [0] * len(procs), f"child exit codes {codes}"
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join(5)


def require_module(name: str) -> None:
    """Skip when a server package is missing, except under CI where it must run."""
    if importlib.util.find_spec(name) is not None:
        return
    reason = f"{name} is not installed (pip install {name}; it is in the dev extra)"
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true requires {name}: {reason}")
    pytest.skip(reason)


# -- 1. threads ---------------------------------------------------------------------------
_THREADS = textwrap.dedent(
    """
    import sys, threading
    from sil_core import Guard
    url, n, flush_s = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    guard = Guard(url, flush_interval=flush_s)

    @guard.track("threads")
    def work(i):
        return i

    def run():
        for i in range(n):
            work(i)

    threads = [threading.Thread(target=run) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # no guard.close(): the script just ends
    """
)


@pytest.mark.parametrize("backend", BACKENDS)
def test_threads_then_normal_interpreter_exit(backend, tmp_path, request, record_property):
    url = _url(backend, tmp_path, request)
    done = _run_py(_THREADS, url, "250", str(FLUSH_S))
    assert done.returncode == 0, done.stderr
    assert_stored_exactly(url, "threads", 8 * 250, record_property)


# -- 2. multiprocessing fork --------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
def test_fork_children_with_their_own_guard(backend, tmp_path, request, record_property):
    url = _url(backend, tmp_path, request)
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=workers.own_guard, args=(url, "fork-own", PER_CHILD)) for _ in range(CHILDREN)]
    for p in procs:
        p.start()
    _join_all(procs)
    assert_stored_exactly(url, "fork-own", CHILDREN * PER_CHILD, record_property)


def test_control_fork_children_that_close_their_guard(tmp_path, request, record_property):
    """The harness control for the test above: with an explicit close() nothing is lost,
    so a shortfall there is the exit path's, not the harness's."""
    url = _url("sqlite", tmp_path, request)
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=workers.own_guard, args=(url, "fork-close", PER_CHILD, True))
             for _ in range(CHILDREN)]
    for p in procs:
        p.start()
    _join_all(procs)
    assert_stored_exactly(url, "fork-close", CHILDREN * PER_CHILD, record_property)


@pytest.mark.parametrize("backend", BACKENDS)
def test_fork_children_with_a_guard_made_before_the_fork(backend, tmp_path, request, record_property):
    url = _url(backend, tmp_path, request)
    guard = Guard(url, flush_interval=FLUSH_S)
    workers.INHERITED = guard
    try:
        for _ in range(10):  # queued in the parent at fork time: written once, by the parent
            with guard.call("fork-inherited"):
                pass
        ctx = mp.get_context("fork")
        procs = [ctx.Process(target=workers.inherited_guard, args=("fork-inherited", PER_CHILD))
                 for _ in range(CHILDREN)]
        for p in procs:
            p.start()
        _join_all(procs)
    finally:
        workers.INHERITED = None
        guard.close()  # the parent (this test process) does not exit; it writes its own 10
    assert_stored_exactly(url, "fork-inherited", 10 + CHILDREN * PER_CHILD, record_property)


@pytest.mark.parametrize("backend", BACKENDS)
def test_fork_process_pool_executor(backend, tmp_path, request, record_property):
    url = _url(backend, tmp_path, request)
    tasks, per_task = 8, 75
    with concurrent.futures.ProcessPoolExecutor(2, mp_context=mp.get_context("fork"),
                                                initializer=workers.pool_init, initargs=(url,)) as pool:
        pids = list(pool.map(workers.pool_task, ["pool-fork"] * tasks, [per_task] * tasks, timeout=60))
        pool.shutdown(wait=True)
    assert 1 <= len(set(pids)) <= 2 and os.getpid() not in pids
    assert_stored_exactly(url, "pool-fork", tasks * per_task, record_property)


_POOL_TERMINATED = textwrap.dedent(
    """
    import multiprocessing as mp, os, sys
    from sil_core import Guard
    url, flush_s, where = sys.argv[1], float(sys.argv[2]), sys.argv[3]
    guard = Guard(url, flush_interval=flush_s) if where == "parent" else None
    child = None

    def init():
        global child
        child = Guard(url, flush_interval=flush_s)

    def work(i):
        g = guard or child
        for j in range(25):
            with g.call("pool-terminated"):
                pass
        return os.getpid()

    if __name__ == "__main__":
        ctx = mp.get_context("fork")
        with ctx.Pool(4, initializer=None if guard else init) as pool:   # __exit__ is terminate(): SIGTERM
            pool.map(work, range(40))
    """
)


@pytest.mark.parametrize("backend, where", [("sqlite", "parent"), ("sqlite", "child"), ("postgresql", "parent")])
def test_a_pool_used_as_a_context_manager_is_terminated_without_loss(backend, where, tmp_path, request,
                                                                      record_property):
    """``with Pool(...) as pool:`` ends with ``terminate()``: SIGTERM to every worker, some
    waiting for a task in a lock, some already in their exit finalizer. Each worker writes
    its queue and dies; none is left hanging (three runs: the timing varies)."""
    url = _url(backend, tmp_path, request)
    for run in range(3):
        out = _run_py(_POOL_TERMINATED, url, str(FLUSH_S), where, timeout=60)
        assert out.returncode == 0, out.stderr
    assert_stored_exactly(url, "pool-terminated", 3 * 40 * 25, record_property)


# -- 3. multiprocessing spawn -------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
def test_spawn_children_with_their_own_guard(backend, tmp_path, request, record_property):
    url = _url(backend, tmp_path, request)
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=workers.own_guard, args=(url, "spawn", PER_CHILD)) for _ in range(CHILDREN)]
    for p in procs:
        p.start()
    _join_all(procs, timeout=90)
    assert_stored_exactly(url, "spawn", CHILDREN * PER_CHILD, record_property)


# -- 4 and 5. servers ---------------------------------------------------------------------
_WSGI_APP = textwrap.dedent(
    """
    import os
    from sil_core import Guard

    # in the master with --preload, else in each worker
    guard = Guard(os.environ["SIL_PROCMODEL_URL"], flush_interval=float(os.environ["SIL_PROCMODEL_FLUSH"]))
    TARGET = os.environ["SIL_PROCMODEL_TARGET"]

    def app(environ, start_response):
        if environ["PATH_INFO"] == "/call":
            with guard.call(TARGET):
                pass
        body = str(os.getpid()).encode()
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
        return [body]
    """
)

_ASGI_APP = textwrap.dedent(
    """
    import asyncio, os
    from sil_core import Guard

    guard = Guard(os.environ["SIL_PROCMODEL_URL"], flush_interval=float(os.environ["SIL_PROCMODEL_FLUSH"]))
    TARGET = os.environ["SIL_PROCMODEL_TARGET"]
    CLOSE_AT_SHUTDOWN = os.environ.get("SIL_PROCMODEL_CLOSE") == "1"

    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    if CLOSE_AT_SHUTDOWN:
                        guard.close()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        if scope["path"] == "/call":
            async with guard.call(TARGET):
                await asyncio.sleep(0)
        body = str(os.getpid()).encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
    """
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(port: int, path: str, timeout: float = 15) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
        assert r.status == 200
        return r.read().decode()


class _Server:
    """A server process in its own process group; ``stop()`` is graceful, ``kill()`` is not."""

    def __init__(self, argv: list[str], env: dict, log: Path) -> None:
        self.log = log
        self._log = open(log, "wb")
        self.proc = subprocess.Popen(argv, env=env, cwd=log.parent, stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def output(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log.read_text(errors="replace")[-4000:]

    def wait_ready(self, port: int, workers: int = 2, timeout: float = 60) -> None:
        """Until ``workers`` distinct worker pids answered ``/ping`` (every worker has its app
        and its Guard loaded before the load starts)."""
        deadline = time.monotonic() + timeout
        seen: set[str] = set()

        def ping(_: int) -> str | None:
            try:
                return _get(port, "/ping", timeout=2)
            except OSError:
                return None

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    pytest.fail(f"server exited early ({self.proc.returncode}):\n{self.output()}")
                seen.update(pid for pid in pool.map(ping, range(8)) if pid)
                if len(seen) >= workers:
                    return
                time.sleep(0.1)
        pytest.fail(f"{len(seen)} of {workers} workers ready after {timeout} s:\n{self.output()}")

    def stop(self, sig: int, timeout: float = 40) -> int:
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"server still running {timeout} s after signal {sig}:\n{self.output()}")

    def kill(self) -> None:
        """Kill whatever is left of the server's process group (its master and workers)."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            pass
        self._log.close()


def _load(port: int, n: int) -> list[str]:
    """``n`` recording requests, 4 at a time (so both workers serve); the serving pids."""
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        return list(pool.map(lambda _: _get(port, "/call"), range(n)))


@pytest.mark.parametrize("preload, backend", [(False, "sqlite"), (True, "sqlite"), (True, "postgresql")],
                         ids=["no-preload-sqlite", "preload-sqlite", "preload-postgresql"])
def test_gunicorn_sync_workers(preload, backend, tmp_path, request, record_property):
    """2 sync workers; ``--preload`` creates the Guard in the master, before the fork."""
    require_module("gunicorn")
    url = _url(backend, tmp_path, request)
    target = "gunicorn-preload" if preload else "gunicorn"
    (tmp_path / "procmodel_wsgi.py").write_text(_WSGI_APP)
    port = _free_port()
    argv = [sys.executable, "-m", "gunicorn", "--workers", "2", "--worker-class", "sync",
            "--bind", f"127.0.0.1:{port}", "--chdir", str(tmp_path), "--timeout", "60",
            "--graceful-timeout", "30", "--log-level", "info"]
    argv += ["--preload"] if preload else []
    server = _Server(argv + ["procmodel_wsgi:app"], _env(SIL_PROCMODEL_URL=url, SIL_PROCMODEL_TARGET=target,
                                                          SIL_PROCMODEL_FLUSH=str(FLUSH_S)),
                     tmp_path / "gunicorn.log")
    try:
        server.wait_ready(port)
        pids = _load(port, REQUESTS)
        assert len(set(pids)) == 2 and str(server.proc.pid) not in pids, f"served by {set(pids)}"
        code = server.stop(signal.SIGTERM)  # graceful: the master stops its workers and exits
        assert code == 0, server.output()
    finally:
        server.kill()
    assert_stored_exactly(url, target, REQUESTS, record_property, f"gunicorn's log:\n{server.output()}")


@pytest.mark.parametrize("workers, backend, sig, close_at_shutdown", [
    (2, "sqlite", signal.SIGINT, False), (2, "sqlite", signal.SIGTERM, False), (2, "postgresql", signal.SIGTERM, False),
    (1, "sqlite", signal.SIGTERM, False), (2, "sqlite", signal.SIGTERM, True),
], ids=["2-workers-sqlite-SIGINT", "2-workers-sqlite-SIGTERM", "2-workers-postgresql-SIGTERM",
        "single-process-sqlite-SIGTERM", "2-workers-sqlite-SIGTERM-close-at-lifespan-shutdown"])
def test_uvicorn(workers, backend, sig, close_at_shutdown, tmp_path, request, record_property):
    """``--workers 2``: the parent stops its spawned workers with SIGTERM whatever signal it
    got. A uvicorn server (a worker, or the single process) shuts down gracefully and then
    re-raises the SIGTERM it caught with the default handler (``Server.capture_signals``), so
    the process dies by the signal: neither ``atexit`` nor a multiprocessing finalizer runs.
    The guard's SIGTERM handler, chained to uvicorn's, writes what is queued and records the
    rest synchronously before uvicorn's graceful shutdown begins. The last case also closes
    the guard in the ASGI lifespan shutdown, which works whatever the exit path does."""
    require_module("uvicorn")
    url = _url(backend, tmp_path, request)
    (tmp_path / "procmodel_asgi.py").write_text(_ASGI_APP)
    port = _free_port()
    argv = [sys.executable, "-m", "uvicorn", "--workers", str(workers), "--host", "127.0.0.1", "--port", str(port),
            "--app-dir", str(tmp_path), "--log-level", "info", "--no-access-log",
            # uvicorn SIGKILLs a worker that misses a 5 s health check; a loaded CI machine must not
            # turn that (a crash, which may lose the last 0.2 s by design) into a failure here
            "--timeout-worker-healthcheck", "60", "procmodel_asgi:app"]
    env = _env(SIL_PROCMODEL_URL=url, SIL_PROCMODEL_TARGET="uvicorn", SIL_PROCMODEL_FLUSH=str(FLUSH_S),
               SIL_PROCMODEL_CLOSE="1" if close_at_shutdown else "0")
    server = _Server(argv, env, tmp_path / "uvicorn.log")
    try:
        server.wait_ready(port, workers)
        pids = _load(port, REQUESTS)
        if workers == 1:
            assert set(pids) == {str(server.proc.pid)}, f"served by {set(pids)}"
        else:  # spawned workers, never the parent
            assert 1 <= len(set(pids)) <= workers and str(server.proc.pid) not in pids, f"served by {set(pids)}"
        code = server.stop(sig)
    finally:
        server.kill()
    detail = f"uvicorn exited with {code}; its log:\n{server.output()}"
    assert_stored_exactly(url, "uvicorn", REQUESTS, record_property, detail)
    assert code in (0, -sig), detail  # a single process dies by the SIGTERM it re-raises


# -- SIGTERM with the default action ------------------------------------------------------
_SIGTERMED = textwrap.dedent(
    """
    import os, signal, sys, time
    from sil_core import Guard
    url, flush_s, handle = sys.argv[1], float(sys.argv[2]), sys.argv[3] == "1"
    guard = Guard(url, flush_interval=flush_s, handle_sigterm=handle)
    for i in range(100):
        with guard.call("sigterm"):
            pass
    os.kill(os.getpid(), signal.SIGTERM)   # docker stop, systemd, a Kubernetes rollout
    time.sleep(30)
    """
)


def test_sigterm_with_the_default_action_writes_the_queue_and_still_dies_of_it(tmp_path, request, record_property):
    url = _url("sqlite", tmp_path, request)
    out = _run_py(_SIGTERMED, url, str(FLUSH_S), "1")
    assert out.returncode == -signal.SIGTERM, out.stderr  # the exit status a supervisor expects
    assert_stored_exactly(url, "sigterm", 100, record_property)


def test_handle_sigterm_false_leaves_sigterm_alone(tmp_path, request):
    url = _url("sqlite", tmp_path, request)
    out = _run_py(_SIGTERMED, url, str(FLUSH_S), "0")
    assert out.returncode == -signal.SIGTERM
    with open_store(url) as store:
        assert store.count_calls("sigterm") == 0  # killed with its queue, as without sil-guard's handler


# -- 6. one process per request -----------------------------------------------------------
_ONE_CALL = ("import sys\nfrom sil_core import Guard\nguard = Guard(sys.argv[1], flush_interval=float(sys.argv[2]))\n"
             "with guard.call('per-request'):\n    pass\n")


def test_one_process_per_request(tmp_path, request, record_property):
    """40 short-lived processes, 8 at a time (SQLite only: starting 40 interpreters is the
    cost here, and a PostgreSQL run would double it without exercising another exit path)."""
    url = _url("sqlite", tmp_path, request)
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        runs = list(pool.map(lambda _: _run_py(_ONE_CALL, url, str(FLUSH_S)), range(40)))
    failed = [r.stderr for r in runs if r.returncode != 0]
    assert not failed, failed[0]
    assert_stored_exactly(url, "per-request", 40, record_property)


# -- 7. the exit drain is bounded ---------------------------------------------------------
_LOCK_HOLDER = textwrap.dedent(
    """
    import sqlite3, sys, time
    conn = sqlite3.connect(sys.argv[1], isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")   # the write lock, until this process dies
    print("locked", flush=True)
    time.sleep(60)
    """
)

_LOCKED_OUT = textwrap.dedent(
    """
    import logging, sys, time
    logging.basicConfig(level=logging.WARNING)
    from sil_core import Guard
    url, before, after = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    # the store opens while it is still free; refresh_interval=60 keeps the calls below off the
    # store (a version refresh would wait on the store behind the stuck flusher)
    guard = Guard(url, refresh_interval=60)
    print("ready", flush=True)
    sys.stdin.readline()        # now another process holds the write lock
    for i in range(before):
        with guard.call("exit-drain"):
            pass
    time.sleep(0.6)             # the flusher has taken these and waits for the lock
    for i in range(after):
        with guard.call("exit-drain"):
            pass
    print(time.time(), flush=True)   # the last call has returned
    # no guard.close(): the script just ends
    """
)

#: what a sil_core WARNING says about records it could not write (loosely worded)
_NOT_WRITTEN = re.compile(r"not\s+(?:been\s+)?written|unwritten|dropp(?:ed|ing)", re.I)


def test_exit_drain_is_bounded_when_the_store_is_locked(tmp_path, request, record_property):
    """A normal exit while another process holds the SQLite write lock: the process still
    ends within 10 s of its last call, and a WARNING of the sil_core logger says that the
    50 queued records (30 in the batch being written, 20 still queued) were not written."""
    url = _url("sqlite", tmp_path, request)
    before, after = 30, 20
    stderr_path = tmp_path / "child.stderr"
    holder = None
    with open(stderr_path, "w") as err:
        child = subprocess.Popen([sys.executable, "-c", _LOCKED_OUT, url, str(before), str(after)],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True, env=_env())
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in child.stdout], daemon=True).start()

    def next_line(what: str) -> str:
        try:
            return lines.get(timeout=60)
        except queue.Empty:
            pytest.fail(f"the child never {what}:\n{stderr_path.read_text()[-3000:]}")

    try:
        assert next_line("opened its guard").strip() == "ready", stderr_path.read_text()[-3000:]
        holder = subprocess.Popen([sys.executable, "-c", _LOCK_HOLDER, str(tmp_path / "sil.db")],
                                  stdout=subprocess.PIPE, text=True)
        assert holder.stdout.readline().strip() == "locked"
        child.stdin.write("go\n")
        child.stdin.flush()
        go = time.time()
        last_call = float(next_line("finished its calls"))
        try:
            code = child.wait(max(0.0, last_call + 12 - time.time()))
        except subprocess.TimeoutExpired:
            code = None
        exited_after = time.time() - last_call
        stderr = stderr_path.read_text()
        numbers = {"queued": before + after, "calls_took_s": round(last_call - go, 1), "exit_code": code,
                   "exited_after_s": round(exited_after, 1) if code is not None else f">{exited_after:.0f}"}
        print("procmodel:", json.dumps(numbers))
        record_property("procmodel", json.dumps(numbers))
        assert code is not None, f"still running {exited_after:.1f} s after its last call:\n{stderr[-3000:]}"
        assert code == 0 and exited_after <= 10, (code, exited_after, stderr[-3000:])
        # logging.basicConfig's format is "WARNING:sil_core:<message>"; the message names the number
        warnings = [line for line in stderr.splitlines()
                    if line.startswith("WARNING:sil_core:") and _NOT_WRITTEN.search(line)]
        says_count = [w for w in warnings if re.search(rf"(?<![\d.]){before + after}(?![\d.])", w)]
        assert says_count, f"no sil_core WARNING saying {before + after} records were not written:\n{stderr[-3000:]}"
    finally:
        if child.poll() is None:
            child.kill()
        child.wait(10)
        child.stdin.close()
        if holder is not None:
            holder.kill()
            holder.wait(10)
            holder.stdout.close()
    with open_store(url) as store:  # the premise: the lock really kept every record out
        assert store.count_calls("exit-drain") == 0
