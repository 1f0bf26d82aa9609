"""Process entry points for tests/core/test_process_models.py.

Every function here records calls and returns WITHOUT ``guard.close()``: what reaches
the store must come from sil-guard's own exit handling. They live in a module (not in
the test file) so spawned children can import them.
"""

from __future__ import annotations

import os

from sil_core import Guard

#: every Guard of these tests flushes this rarely, so the records that reach the store were
#: written by the exit path (with the default 0.2 s, a process that lingers after its last
#: call would hide a lost exit flush by luck)
FLUSH_S = 30.0
#: a Guard the parent creates before forking (gunicorn ``--preload`` style); children use it
INHERITED: Guard | None = None
#: the Guard a ProcessPoolExecutor worker creates in its initializer
_POOL_GUARD: Guard | None = None


def own_guard(url: str, target: str, n: int, close: bool = False) -> None:
    """A child that creates its own Guard, makes ``n`` guarded calls and returns."""
    guard = Guard(url, flush_interval=FLUSH_S)
    for i in range(n):
        with guard.call(target, context={"pid": os.getpid(), "i": i}):
            pass
    if close:  # the control: an explicit close() must store every record
        guard.close()


def inherited_guard(target: str, n: int) -> None:
    """A forked child that uses the Guard its parent created before the fork."""
    assert INHERITED is not None, "the parent sets INHERITED before forking"
    for i in range(n):
        with INHERITED.call(target, context={"pid": os.getpid(), "i": i}):
            pass


def pool_init(url: str) -> None:
    global _POOL_GUARD
    _POOL_GUARD = Guard(url, flush_interval=FLUSH_S)


def pool_task(target: str, n: int) -> int:
    for i in range(n):
        with _POOL_GUARD.call(target, context={"pid": os.getpid(), "i": i}):
            pass
    return os.getpid()
