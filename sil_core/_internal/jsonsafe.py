"""Turn arbitrary user values (call context, error messages) into bounded JSON.

A value that JSON cannot encode is replaced by its ``repr``; long strings, deep nesting
and long containers are cut, so a 10 MB context string costs a bounded amount of space
and time (seed bug D3: an unserialisable context broke the caller).
"""

from __future__ import annotations

import json
from typing import Any

MAX_STR = 2048
MAX_ITEMS = 64
MAX_DEPTH = 6
MAX_CONTEXT_BYTES = 16 * 1024


def _cut(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    return text[:limit] + f"...[{len(text) - limit} chars cut]"


def bounded(value: Any, depth: int = 0) -> Any:
    """Return a JSON-encodable copy of ``value`` with bounded size."""
    if value is None or isinstance(value, (bool, int)):
        return value
    if isinstance(value, float):
        return value if value == value and value not in (float("inf"), float("-inf")) else repr(value)
    if isinstance(value, str):
        return _cut(value, MAX_STR)
    if depth >= MAX_DEPTH:
        return _cut(_safe_repr(value), 200)
    if isinstance(value, dict):
        out = {}
        for i, (k, v) in enumerate(value.items()):
            if i >= MAX_ITEMS:
                out["..."] = f"{len(value) - MAX_ITEMS} more items cut"
                break
            out[k if isinstance(k, str) else _cut(_safe_repr(k), 200)] = bounded(v, depth + 1)
        return out
    if isinstance(value, (list, tuple, set, frozenset)):
        items = list(value)[: MAX_ITEMS + 1] if not isinstance(value, (list, tuple)) else value
        out_list = [bounded(v, depth + 1) for v in items[:MAX_ITEMS]]
        if len(value) > MAX_ITEMS:
            out_list.append(f"... {len(value) - MAX_ITEMS} more items cut")
        return out_list
    return _cut(_safe_repr(value), MAX_STR)


def _safe_repr(value: Any) -> str:
    try:
        return repr(value)
    except Exception as exc:  # a broken __repr__ must not break recording
        return f"<unrepresentable {type(value).__name__}: {type(exc).__name__}>"


def dumps_context(context: Any) -> str | None:
    """Encode a call's context as compact JSON of at most ``MAX_CONTEXT_BYTES``."""
    if context is None:
        return None
    text = json.dumps(bounded(context), ensure_ascii=False, separators=(",", ":"))
    if len(text) > MAX_CONTEXT_BYTES:
        text = json.dumps({"_truncated": _cut(text, MAX_CONTEXT_BYTES // 2)}, ensure_ascii=False)
    return text


def error_message(exc: BaseException, limit: int = 1000) -> str:
    """A bounded ``str(exc)`` that never raises."""
    try:
        text = str(exc)
    except Exception:
        text = f"<unprintable {type(exc).__name__}>"
    return _cut(text, limit)
