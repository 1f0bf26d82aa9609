"""Text for the page: escaped, and always encodable (a lone surrogate becomes ``\\udcxx``)."""

from __future__ import annotations

import html
from datetime import datetime, timezone
from typing import Any

__all__ = ("esc", "pct", "secs", "utc")


def esc(value: Any) -> str:
    """``value`` as HTML text: special characters escaped, unencodable ones shown as escapes."""
    text = value if isinstance(value, str) else str(value)
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return html.escape(text, quote=True)


def pct(x: float | None, digits: int = 1) -> str:
    return "-" if x is None else f"{x * 100:.{digits}f} %"


def secs(s: float | None) -> str:
    if s is None:
        return "-"
    if s < 1e-3:
        return f"{s * 1e6:.0f} µs"
    if s < 1:
        return f"{s * 1e3:.3g} ms"
    return f"{s:.3g} s"


def utc(ts: float | None) -> str:
    if not ts:
        return "-"
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
