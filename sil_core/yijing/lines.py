"""Six engineering lines from one bounded window of calls (bottom to top).

Every line is ``score = 1 - 0.4 * measure / limit``, clamped to [0, 1]: a line is yang
(strong) when ``score >= 0.60``, i.e. its measure is at most its limit, and moving when
``score < 0.45`` (measure above 1.375 x limit), as in the seed.

====  ==================  ===========================================================  =====
line  dimension           measure                                                      limit
====  ==================  ===========================================================  =====
1     stability           share of calls that failed                                   0.20
2     efficiency          share of calls slower than ``latency_target_sec``            0.20
3     learning_activity   consecutive failures that end the window (no recovery yet)   2
4     routing_accuracy    share of calls that failed with category ``routing``         0.05
5     collaboration       share of calls that failed with category ``collaboration``   0.05
6     governance          share of calls that failed with category ``governance``      0.05
====  ==================  ===========================================================  =====

A failure's category is, in order: the trace's ``error_category``, the call's
``context["error_category"]`` (set it on ``guard.call(...).context``), else
:func:`classify_error` of its error type and message. Context key names are never read.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

__all__ = ("CATEGORIES", "DIMENSIONS", "LineSignal", "classify_error", "error_category", "score_lines")

DIMENSIONS: tuple[str, ...] = (
    "stability", "efficiency", "learning_activity", "routing_accuracy", "collaboration", "governance",
)
YANG_AT, MOVING_BELOW = 0.60, 0.45
LIMITS = {"stability": 0.20, "efficiency": 0.20, "learning_activity": 2, "routing_accuracy": 0.05,
          "collaboration": 0.05, "governance": 0.05}

# category -> words that name it (accepted as ``error_category`` values), then the line it weakens
CATEGORIES: dict[str, tuple[str, ...]] = {
    "dependency": ("dependency", "upstream", "network", "timeout"),
    "governance": ("governance", "rate_limit", "quota", "auth", "permission", "budget"),
    "routing": ("routing", "schema", "route", "model", "tool"),
    "collaboration": ("collaboration", "handoff", "context"),
}
_ALIASES = {alias: category for category, aliases in CATEGORIES.items() for alias in aliases}

# Free-text classifier: whole words only (``\b``), case-insensitive, first match wins.
# "generate", "accurate", "async", "author" or "model=" in a context do not match.
PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = tuple((name, re.compile(rx, re.IGNORECASE)) for name, rx in (
    ("governance", r"\b(?:429|401|403|rate[ _-]?limit(?:ed|s)?|too many requests|quotas?|throttl(?:ed|ing)"
                   r"|unauthori[sz]ed|forbidden|auth(?:entication|orization)?|permission denied|budget exceeded"
                   r"|insufficient credits?|invalid api key)\b"),
    ("routing", r"\b(?:schema|validation error|json ?decode(?: error)?|invalid json|malformed (?:json|output|response)"
                r"|unknown (?:tool|model|route)|(?:tool|model|route) not found|no route|routing|misrouted)\b"),
    ("collaboration", r"\b(?:hand-?offs?|context (?:window|length|overflow)|context too long|maximum context"
                      r"|token limit exceeded|coordination|lost context)\b"),
    ("dependency", r"\b(?:time ?out|timed out|connection (?:refused|reset|error|aborted)|unavailable|unreachable"
                   r"|50[234]|bad gateway|dns|upstream|dependency)\b"),
))
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")


def classify_error(text: str | None) -> str | None:
    """The category of a free-text error (``RateLimitError`` reads as "Rate Limit Error")."""
    if not text:
        return None
    words = _CAMEL.sub(" ", str(text)).replace("_", " ")
    for name, pattern in PATTERNS:
        if pattern.search(words):
            return name
    return None


def error_category(trace: Mapping[str, Any]) -> str | None:
    """A failed trace's category: explicit if given, else classified; ``None`` on success."""
    if trace.get("success"):
        return None
    context = trace.get("context")
    from_context = context.get("error_category") if isinstance(context, Mapping) else None
    for explicit in (trace.get("error_category"), from_context):
        if isinstance(explicit, str) and explicit.strip().lower() in _ALIASES:
            return _ALIASES[explicit.strip().lower()]
    return classify_error(f"{trace.get('error_type') or ''} {trace.get('error') or ''}")


@dataclass(frozen=True)
class LineSignal:
    """A scored dimension as a line: yang when strong, moving when weak enough to change."""

    position: int
    dimension: str
    score: float
    state: str
    moving: bool
    evidence: str

    @property
    def bit(self) -> int:
        return 1 if self.state == "yang" else 0


def _line(position: int, measure: float, evidence: str) -> LineSignal:
    dimension = DIMENSIONS[position - 1]
    score = max(0.0, min(1.0, 1.0 - 0.4 * measure / LIMITS[dimension]))
    return LineSignal(position, dimension, score, "yang" if score >= YANG_AT else "yin", score < MOVING_BELOW, evidence)


def score_lines(traces: Sequence[Mapping[str, Any]], before_metrics: Mapping | None = None, *,
                latency_target_sec: float = 5.0) -> list[LineSignal]:
    """Score the six lines from ``traces`` (one bounded window, oldest first).

    ``before_metrics`` is accepted for the seed's signature and not used: every line comes
    from the same window (the seed mixed a windowed success rate with the whole history).
    """
    traces = list(traces)
    total = max(1, len(traces))
    failures = [t for t in traces if not t.get("success")]
    slow = sum(1 for t in traces if float(t.get("duration_sec") or 0.0) > latency_target_sec)
    run = 0
    for t in reversed(traces):
        if t.get("success"):
            break
        run += 1
    counts = {name: 0 for name in CATEGORIES}
    for t in failures:
        category = error_category(t)
        if category is not None:
            counts[category] += 1
    lines = [
        _line(1, len(failures) / total, f"failures={len(failures)}/{len(traces)}, dependency={counts['dependency']}"),
        _line(2, slow / total, f"slower_than_{latency_target_sec:g}s={slow}/{len(traces)}"),
        _line(3, run, f"trailing_failures={run}"),
    ]
    for position, category in ((4, "routing"), (5, "collaboration"), (6, "governance")):
        lines.append(_line(position, counts[category] / total, f"{category}_failures={counts[category]}/{len(traces)}"))
    return lines
