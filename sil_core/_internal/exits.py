"""The end of a process: every live guard writes what it queued, in every process model.

* a normal interpreter exit runs ``atexit``;
* a child that ``multiprocessing`` started (fork or spawn, a ``ProcessPoolExecutor``
  worker) ends with ``os._exit``, which skips ``atexit``, but first runs the
  ``multiprocessing.util.Finalize`` callbacks of its own process: one is registered in each
  process, a forked child included (after ``multiprocessing`` clears the parent's);
* ``SIGTERM`` (docker, systemd, Kubernetes, a server's master stopping its workers) kills
  a process without either. Where a guard is created on the main thread and SIGTERM has
  the default action, a handler closes the guards and then dies of the signal as before.
  Where a framework already handles SIGTERM for a graceful shutdown (uvicorn, gunicorn), the
  handler is chained: it first makes every live guard write what it queued and record the
  rest synchronously (each call returns once its record is committed), then calls the
  framework's handler. uvicorn, for one, restores the default action after its graceful
  shutdown and raises SIGTERM again, so nothing may be left queued by then.

Every wait is bounded by the guards' ``exit_timeout``: a store that is down cannot hang an
exit. A SIGTERM never cuts a close short: a second one while the first is handled is
ignored, one that interrupts a close on the main thread (``multiprocessing.Pool.terminate``
signals workers that are already in their exit finalizer) lets that close finish and then
ends the process, and one that arrives while another thread closes a guard waits for it. sil-guard's own threads block SIGTERM (:func:`own_thread`), so the kernel delivers it
to the main thread: a Python handler runs only there, and a main thread blocked in a
lock (a Pool worker waiting for a task) must be woken by the signal itself, or the
process would never die. ``Guard(handle_sigterm=False)`` leaves SIGTERM alone.
"""

from __future__ import annotations

import atexit
import os
import signal
import threading
import time
import weakref
from typing import Any, Callable

__all__ = ("close_all", "finished", "own_thread", "track")

#: every Guard whose close has not finished
_live: "weakref.WeakSet[Any]" = weakref.WeakSet()
_hooked: set[int] = set()  # pids whose exit hooks are registered
_forkers: list[Callable[[Any], None]] = []
_handling: list[bool] = [False]  # a SIGTERM is being handled (a second one must not cut it short)
_handling_lock = threading.Lock()
_deferred: list[int] = []  # a signal to die of once the main thread's close has finished
_watched: set[int] = set()  # pids with a SIGTERM watcher thread


def own_thread() -> None:
    """Called first in each of sil-guard's threads: block SIGTERM there (see module docstring)."""
    if hasattr(signal, "pthread_sigmask") and hasattr(signal, "SIGTERM"):
        try:
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
        except (OSError, ValueError):
            pass


def track(guard: Any, *, handle_sigterm: bool, after_fork: Callable[[Any], None]) -> None:
    """Close ``guard`` (with every other live one) when this process ends."""
    _live.add(guard)
    if after_fork not in _forkers:
        _forkers.append(after_fork)
    _register()
    if handle_sigterm:
        _hook_sigterm()


def finished(guard: Any) -> None:
    """A guard's close has finished; a SIGTERM that interrupted it ends the process now."""
    _live.discard(guard)
    if _deferred and threading.current_thread() is threading.main_thread() and not _closing_here():
        _die(_deferred.pop())


def _closing_here() -> bool:
    """Whether a guard's close is under way on this thread (``guard.closing_thread``)."""
    me = threading.get_ident()
    return any(g.closing_thread == me for g in list(_live))


def close_all() -> None:
    """Close every live guard, within the largest ``exit_timeout`` among them."""
    guards = [g for g in list(_live) if not g.closed]
    if not guards:
        return
    deadline = time.monotonic() + max(g.exit_timeout for g in guards)
    for guard in guards:
        guard.close(timeout=max(0.0, deadline - time.monotonic()))


class _Key:
    """The object under which ``multiprocessing`` calls us in each child it starts."""


_key = _Key()


def _register() -> None:
    pid = os.getpid()
    if pid in _hooked:
        return
    import multiprocessing.util as mp_util

    if not _hooked:  # atexit handlers and after-fork hooks are inherited by forked children
        atexit.register(close_all)
        mp_util.register_after_fork(_key, _in_multiprocessing_child)
    _hooked.add(pid)
    mp_util.Finalize(None, close_all, exitpriority=100)


def _in_multiprocessing_child(_: object) -> None:
    if _live:
        _register()
        _watch_sigterm()


def _take_sigterm() -> bool:
    """Claim the handling of a SIGTERM (``False``: another path handles it already)."""
    with _handling_lock:
        if _handling[0]:
            return False
        _handling[0] = True
        return True


def _watch_sigterm() -> None:
    """A multiprocessing child (a Pool worker) may be blocked in a lock when SIGTERM comes
    (``Pool.terminate``), and if the signal lands just before the wait starts, Python runs
    no handler until the lock is released, which may be never. So the signal is also written
    to a wakeup pipe that a thread of ours reads: if the main thread has not taken the signal
    within 0.1 s, that thread closes the guards and ends the process (exit code 128 + 15)."""
    if not hasattr(signal, "set_wakeup_fd") or signal.getsignal(signal.SIGTERM) is not _on_sigterm_default \
            or os.getpid() in _watched:
        return
    try:
        r, w = os.pipe()
        os.set_blocking(w, False)
        previous = signal.set_wakeup_fd(w, warn_on_full_buffer=False)
    except (ValueError, OSError):
        return
    if previous != -1:  # someone else (an event loop) reads the wakeup fd: leave it to them
        signal.set_wakeup_fd(previous)
        os.close(r)
        os.close(w)
        return

    def watch() -> None:
        own_thread()
        while True:
            data = os.read(r, 64)
            if not data:
                return
            if signal.SIGTERM in data:
                time.sleep(0.1)  # the main thread's handler, if it can run, does it all
                if _take_sigterm():
                    close_all()
                    _wait_for_other_closes()
                    os._exit(128 + signal.SIGTERM)

    _watched.add(os.getpid())
    threading.Thread(target=watch, name="sil-sigterm", daemon=True).start()


def _after_fork_in_child() -> None:
    global _handling_lock
    _handling[0] = False
    _handling_lock = threading.Lock()
    _deferred.clear()
    for guard in list(_live):
        for fn in _forkers:
            fn(guard)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


# -- SIGTERM -------------------------------------------------------------------------------------
def _hook_sigterm() -> None:
    if not hasattr(signal, "SIGTERM") or threading.current_thread() is not threading.main_thread():
        return  # signal handlers can only be set from the main thread
    try:
        current = signal.getsignal(signal.SIGTERM)
    except (ValueError, OSError):
        return
    if getattr(current, "_sil_guard", False) or current in (signal.SIG_IGN, None):
        return  # ours already, ignored on purpose, or a handler not set from Python
    handler = _on_sigterm_default if current == signal.SIG_DFL else _chained(current)
    try:
        signal.signal(signal.SIGTERM, handler)
    except (ValueError, OSError):
        return
    import multiprocessing

    if multiprocessing.parent_process() is not None:  # a guard made in a Pool worker (its initializer)
        _watch_sigterm()


def _on_sigterm_default(signum: int, frame: Any) -> None:
    """SIGTERM had the default action: close the guards, then die of the signal as before."""
    if not _take_sigterm():
        return  # the first SIGTERM's handler (or the watcher) will end the process
    if _closing_here():
        _deferred.append(signum)  # a close on this thread was interrupted: it finishes, then we die
        return
    try:
        close_all()
        _wait_for_other_closes()
    finally:
        _die(signum)


def _wait_for_other_closes() -> None:
    deadline = time.monotonic() + max((g.exit_timeout for g in list(_live)), default=5.0)
    while any(g.closed for g in list(_live)) and time.monotonic() < deadline:
        time.sleep(0.005)  # closes under way on other threads (closed, not finished yet)


def _die(signum: int) -> None:
    """End the process by ``signum`` with its default action, as if we had never caught it."""
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


_on_sigterm_default._sil_guard = True  # type: ignore[attr-defined]


def _chained(previous: Callable[[int, Any], Any]) -> Callable[[int, Any], Any]:
    def on_sigterm(signum: int, frame: Any) -> Any:
        """A framework's graceful shutdown begins: leave nothing queued, then let it run."""
        if not _take_sigterm():
            return previous(signum, frame)  # a second signal: the framework decides (e.g. force exit)
        try:
            guards = [g for g in list(_live) if not g.closed]
            deadline = time.monotonic() + max((g.exit_timeout for g in guards), default=0.0)
            for guard in guards:
                guard.write_through(timeout=max(0.0, deadline - time.monotonic()))
        except Exception:  # never in the way of the framework's own handler
            pass
        finally:
            _handling[0] = False
        return previous(signum, frame)

    on_sigterm._sil_guard = True  # type: ignore[attr-defined]
    on_sigterm.__wrapped__ = previous  # type: ignore[attr-defined]
    return on_sigterm
