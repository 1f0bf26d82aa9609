"""Values from user code checked at the boundary, so one bad value never poisons a store.

A latency must be a finite number >= 0 and a score a finite number; text must encode as
UTF-8 without NUL (a lone surrogate or a NUL byte is replaced by U+FFFD, as SQLite and
PostgreSQL refuse them). What is dropped is counted per reason and said on the
``sil_core`` logger (at most once a minute per reason); it never raises into the caller.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import Counter
from typing import Any

__all__ = ("dropped", "finite", "note", "safe_text", "safe_texts", "utf8_clean")

_log = logging.getLogger("sil_core")
#: values dropped (or records, where a value made the record unusable), per reason
dropped: Counter = Counter()
_last_logged: dict[str, float] = {}
_lock = threading.Lock()


def note(reason: str, value: Any = None) -> None:
    """Count a dropped value and say so (rate-limited per reason)."""
    now = time.monotonic()
    with _lock:
        dropped[reason] += 1
        count = dropped[reason]
        last = _last_logged.get(reason)
        if last is not None and now - last < 60.0:
            return
        _last_logged[reason] = now
    _log.warning("sil-guard: dropped %s (%r); the call is recorded without it (%d so far)", reason, value, count)


def finite(value: Any, reason: str, *, minimum: float | None = None) -> float | None:
    """``value`` as a float if it is a finite number (and ``>= minimum``), else ``None``
    (counted under ``reason``). ``None`` stays ``None`` uncounted."""
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        number = math.nan
    if isinstance(value, bool) or not math.isfinite(number) or (minimum is not None and number < minimum):
        note(reason, value)
        return None
    return number


def safe_text(text: Any) -> Any:
    """``text`` with lone surrogates and NUL characters replaced (non-strings unchanged)."""
    if not isinstance(text, str):
        return text
    if "\x00" in text:
        text = text.replace("\x00", "\ufffd")
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            text = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return text


def safe_texts(value: Any) -> Any:
    """``value`` with :func:`safe_text` applied to every string in it (dict keys included)."""
    if isinstance(value, str):
        return safe_text(value)
    if isinstance(value, dict):
        return {safe_texts(k): safe_texts(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [safe_texts(v) for v in value]
    return value


def utf8_clean(value: Any) -> bool:
    """Whether every string in ``value`` (dict keys included) is stored as it is: UTF-8,
    without a lone surrogate or a NUL."""
    if isinstance(value, str):
        return safe_text(value) is value
    if isinstance(value, dict):
        return all(utf8_clean(k) and utf8_clean(v) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return all(utf8_clean(v) for v in value)
    return True
