"""Numeric metrics of calls (quality scores, tokens, cost, anything else) and guardrails.

A call carries ``metrics``: short names to finite floats. Names are ASCII identifiers of at
most 64 characters, dots allowed (:data:`NAME_RE`: ``tokens_out``, ``judge.faithfulness``);
a value that is not a finite number, or a bad name, is dropped and
counted (``guard.health()``), never raised. Four names are reserved and captured by the
integrations: ``score`` (the call's quality score, also ``call.score``), ``tokens_in``,
``tokens_out`` and ``cost_usd``.

Cells keep, per metric, the moments :data:`MOMENTS` (count, sum and sum of squares of the
values, and of the logs of the positive values), so a metric's mean, its interval and the
test of a relative guardrail cost O(1) whatever the history (see ``docs/statistics.md``,
"Guardrails").
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Mapping

from ._internal.validate import finite, note
from .errors import ConfigError

__all__ = ("DEFAULT_GUARDRAILS", "Guardrail", "MetricStats", "PriceTable", "RESERVED", "clean_metrics")

RESERVED = ("score", "tokens_in", "tokens_out", "cost_usd")
NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]{0,63}$")
#: per-metric moments kept in a cell, in storage order
MOMENTS = ("n", "sum", "sumsq", "log_n", "log_sum", "log_sumsq")
_Z95 = 1.959963984540054
_BETTER = ("higher", "lower")


def clean_metrics(metrics: Any, where: str) -> dict[str, float] | None:
    """``metrics`` with bad names and values dropped (counted under ``where``); ``None``
    when nothing is left."""
    if metrics is None:
        return None
    if not isinstance(metrics, Mapping):
        note(f"{where} (not a mapping)", type(metrics).__name__)
        return None
    out: dict[str, float] = {}
    for name, value in metrics.items():
        if not isinstance(name, str) or not NAME_RE.match(name):
            note(f"{where} name", name)
            continue
        if isinstance(value, (str, bytes)):  # a number, not text that reads as one
            note(f"{where} value", value)
            continue
        number = finite(value, f"{where} value")
        if number is not None:
            out[name] = number
    return out or None


def add_value(moments: dict[str, list[float]], name: str, value: float, sign: int = 1) -> None:
    """Add (``sign=-1``: subtract) one value into ``moments[name]``."""
    m = moments.get(name)
    if m is None:
        m = moments[name] = [0, 0.0, 0.0, 0, 0.0, 0.0]
    m[0] += sign
    m[1] += sign * value
    m[2] += sign * value * value
    if value > 0:
        lv = math.log(value)
        m[3] += sign
        m[4] += sign * lv
        m[5] += sign * lv * lv


def add_moments(into: dict[str, list[float]], other: Mapping[str, list[float]], sign: int = 1) -> None:
    """Add (or subtract) every metric's moments of ``other`` into ``into``; a metric whose
    moments all become 0 is removed."""
    for name, m in other.items():
        mine = into.get(name)
        if mine is None:
            mine = into[name] = [0, 0.0, 0.0, 0, 0.0, 0.0]
        for i, v in enumerate(m):
            mine[i] += sign * v
        if mine[0] == 0 and mine[3] == 0 and not any(mine[1:3]) and not any(mine[4:]):
            del into[name]


@dataclass(frozen=True, slots=True)
class MetricStats:
    """A metric over some calls: ``n`` values, their ``mean`` with a normal 95 % interval
    ``ci`` (``None`` below 2 values) and standard deviation ``sd``."""

    name: str
    n: int
    mean: float | None
    ci: tuple[float, float] | None
    sd: float | None

    @classmethod
    def from_moments(cls, name: str, m: list[float]) -> "MetricStats":
        n = int(m[0])
        if n <= 0:
            return cls(name, 0, None, None, None)
        mean = m[1] / n
        if n < 2:
            return cls(name, n, mean, None, None)
        var = (m[2] - n * mean * mean) / (n - 1)
        if var <= 1e-12 * max(1.0, mean * mean):  # rounding of equal values, not spread
            var = 0.0
        sd = math.sqrt(var)
        half = _Z95 * sd / math.sqrt(n)
        return cls(name, n, mean, (mean - half, mean + half), sd)


@dataclass(frozen=True, slots=True)
class Guardrail:
    """How a metric judges a change: which way is ``better`` (``"higher"`` or
    ``"lower"``) and by how much it may get worse. ``tolerance`` is on the metric's own
    scale, or with ``relative=True`` a ratio (0.20: up to 20 % worse, tested on the mean of
    the logs, i.e. the geometric mean). ``enabled=False`` turns a default guardrail off."""

    better: str = "higher"
    tolerance: float = 0.0
    relative: bool = False
    enabled: bool = True

    def __post_init__(self) -> None:
        if self.better not in _BETTER:
            raise ConfigError(f"Guardrail better must be one of {_BETTER}, not {self.better!r}")
        if isinstance(self.tolerance, bool) or not isinstance(self.tolerance, (int, float)) \
                or not math.isfinite(self.tolerance) or self.tolerance < 0:
            raise ConfigError(f"Guardrail tolerance must be a finite number >= 0, not {self.tolerance!r}")
        if self.relative and self.tolerance >= 1 and self.better == "higher":
            raise ConfigError("a relative guardrail where higher is better needs tolerance < 1")

    def as_dict(self) -> dict[str, Any]:
        return {"better": self.better, "tolerance": self.tolerance, "relative": self.relative,
                "enabled": self.enabled}

    @classmethod
    def coerce(cls, value: Any, name: str) -> "Guardrail":
        """A guardrail from itself, a dict (:meth:`as_dict`), or ``None``/``False`` (off)."""
        if isinstance(value, Guardrail):
            return value
        if value is None or value is False:
            return cls(enabled=False)
        if isinstance(value, Mapping):
            unknown = set(value) - {"better", "tolerance", "relative", "enabled"}
            if unknown:
                raise ConfigError(f"guardrail {name!r}: unknown keys {sorted(unknown)}")
            return cls(**dict(value))
        raise ConfigError(f"guardrail {name!r} must be a Guardrail, a dict or None, not {type(value).__name__}")


#: applied to a reserved metric that calls carry, unless the policy says otherwise
DEFAULT_GUARDRAILS: dict[str, Guardrail] = {
    "score": Guardrail("higher", 0.05),
    "tokens_in": Guardrail("lower", 0.20, relative=True),
    "tokens_out": Guardrail("lower", 0.20, relative=True),
    "cost_usd": Guardrail("lower", 0.20, relative=True),
}


class PriceTable:
    """Turns token counts into ``cost_usd`` where a framework reports no cost.

    ``prices`` maps a model name to ``(input, output)`` US dollars per million tokens
    (``{"gpt-4o-mini": (0.15, 0.60)}``). A model not in the table matches its longest
    listed prefix (``"gpt-4o-mini-2024-07-18"`` takes ``"gpt-4o-mini"``); ``"*"`` is the
    price of any other model."""

    def __init__(self, prices: Mapping[str, Any]) -> None:
        table: dict[str, tuple[float, float]] = {}
        for model, price in dict(prices).items():
            try:
                p_in, p_out = (float(x) for x in price)
            except (TypeError, ValueError) as exc:
                raise ConfigError(f"price of {model!r} must be (input, output) USD per million tokens") from exc
            if not (math.isfinite(p_in) and math.isfinite(p_out)) or p_in < 0 or p_out < 0:
                raise ConfigError(f"price of {model!r} must be finite and >= 0")
            table[str(model)] = (p_in, p_out)
        self.prices = table
        self._by_length = sorted((m for m in table if m != "*"), key=len, reverse=True)

    def price(self, model: str | None) -> tuple[float, float] | None:
        """``(input, output)`` per million tokens for ``model`` (``None`` if unlisted)."""
        if model:
            if model in self.prices:
                return self.prices[model]
            for name in self._by_length:
                if model.startswith(name):
                    return self.prices[name]
        return self.prices.get("*")

    def cost(self, model: str | None, tokens_in: float, tokens_out: float) -> float | None:
        """The cost in US dollars of one model call (``None`` if the model has no price)."""
        price = self.price(model)
        if price is None:
            return None
        return (tokens_in * price[0] + tokens_out * price[1]) / 1_000_000
