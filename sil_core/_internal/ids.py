"""Unique, roughly time-ordered ids that are cheap enough for the hot path.

An id is 12 hex digits of milliseconds since the epoch, a per-process random part and a
per-process counter, so ids never collide across processes or hosts (docs/migrating-from-0.1.md, B6) and
sort by creation time. The random part is drawn again in a forked child.
"""

from __future__ import annotations

import itertools
import os
import socket
import time

_state: list = []


def _reseed() -> None:
    _state[:] = [os.urandom(6).hex(), itertools.count(1)]


_reseed()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reseed)


def new_id() -> str:
    """Return a new unique id such as ``0193a1b2c3d4-5f2e9a0b7c11-1a``."""
    prefix, counter = _state
    return f"{time.time_ns() // 1_000_000:012x}-{prefix}-{next(counter):x}"


def default_worker_id() -> str:
    """This worker's name in the trail: ``host:pid``."""
    return f"{socket.gethostname()}:{os.getpid()}"
