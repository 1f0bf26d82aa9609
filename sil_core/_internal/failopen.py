"""The one place where bookkeeping errors are swallowed (the guard fails open).

Every piece of bookkeeping (store writes, notifiers, serialisation, strategies) runs
inside :func:`fail_open`; the user's own call never does, so its result and exceptions
always reach the caller untouched. Errors are logged with a per-site rate limit and
counted, so a broken store does not flood the log.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from contextlib import contextmanager
from typing import Iterator

logger = logging.getLogger("sil_core")

#: How many bookkeeping errors were swallowed, per site (read by tests and ``sil status``).
error_counts: Counter = Counter()
_last_logged: dict[str, float] = {}
_lock = threading.Lock()
_LOG_EVERY_S = 60.0
_listeners: list[Callable[[str, BaseException], None]] = []


def add_listener(fn: Callable[[str, BaseException], None]) -> None:
    """Call ``fn(site, exc)`` on every swallowed error (used to record trail events)."""
    _listeners.append(fn)


def report(site: str, exc: BaseException) -> None:
    """Count and (rate-limited) log an error swallowed at ``site``."""
    now = time.monotonic()
    with _lock:
        error_counts[site] += 1
        count = error_counts[site]
        last = _last_logged.get(site)
        should_log = last is None or now - last >= _LOG_EVERY_S
        if should_log:
            _last_logged[site] = now
    if should_log:
        logger.warning(
            "sil-guard: %s failed (%s: %s); the guarded call is not affected "
            "(%d such errors so far)",
            site, type(exc).__name__, exc, count, exc_info=exc,
        )
    for fn in list(_listeners):
        try:
            fn(site, exc)
        except Exception:  # a listener must not break the fail-open path
            pass


@contextmanager
def fail_open(site: str) -> Iterator[None]:
    """Run a block of bookkeeping; an ``Exception`` in it is reported and swallowed."""
    try:
        yield
    except Exception as exc:  # noqa: BLE001 - this is the point
        report(site, exc)
