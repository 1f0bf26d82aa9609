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
exit. ``Guard(handle_sigterm=False)`` leaves SIGTERM alone.
"""

from __future__ import annotations

import atexit
import os
import signal
import threading
import time
import weakref
from typing import Any, Callable

__all__ = ("close_all", "track")

#: every Guard not closed yet
_live: "weakref.WeakSet[Any]" = weakref.WeakSet()
_hooked: set[int] = set()  # pids whose exit hooks are registered
_forkers: list[Callable[[Any], None]] = []


def track(guard: Any, *, handle_sigterm: bool, after_fork: Callable[[Any], None]) -> None:
    """Close ``guard`` (with every other live one) when this process ends."""
    _live.add(guard)
    if after_fork not in _forkers:
        _forkers.append(after_fork)
    _register()
    if handle_sigterm:
        _hook_sigterm()


def forget(guard: Any) -> None:
    _live.discard(guard)


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


def _after_fork_in_child() -> None:
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
        pass


def _on_sigterm_default(signum: int, frame: Any) -> None:
    """SIGTERM had the default action: close the guards, then die of the signal as before."""
    try:
        close_all()
    finally:
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)


_on_sigterm_default._sil_guard = True  # type: ignore[attr-defined]


def _chained(previous: Callable[[int, Any], Any]) -> Callable[[int, Any], Any]:
    def on_sigterm(signum: int, frame: Any) -> Any:
        """A framework's graceful shutdown begins: leave nothing queued, then let it run."""
        try:
            guards = [g for g in list(_live) if not g.closed]
            deadline = time.monotonic() + max((g.exit_timeout for g in guards), default=0.0)
            for guard in guards:
                guard.write_through(timeout=max(0.0, deadline - time.monotonic()))
        except Exception:  # never in the way of the framework's own handler
            pass
        return previous(signum, frame)

    on_sigterm._sil_guard = True  # type: ignore[attr-defined]
    on_sigterm.__wrapped__ = previous  # type: ignore[attr-defined]
    return on_sigterm
