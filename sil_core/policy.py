"""``RolloutPolicy``: how a config change is rolled out and judged. Every default is
documented with the reason it was chosen (see ``benchmarks/detection.py``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any, Mapping

from .errors import ConfigError
from .metrics import DEFAULT_GUARDRAILS, NAME_RE, Guardrail

__all__ = ("RolloutPolicy",)

_ON_INCONCLUSIVE = ("hold", "keep", "rollback")
_ON_WATCH = ("alert", "revert")


@dataclass(frozen=True, slots=True, kw_only=True)
class RolloutPolicy:
    """How a change is rolled out and when it is promoted or rolled back.

    Attributes:
        alpha: one-sided false-rollback budget for the whole change, split equally
            (Bonferroni) across the metrics tested: success rate, mean log-latency, p95.
            0.10, not 0.05: the anytime bounds are conservative over a finite horizon, so
            the measured false-rollback rate of a neutral change stays far below alpha
            (at most ~2 % at 0.10, tripwire included; ~1.4 % at 0.05), while at 0.05 a
            drop from 95 % to 80 % success is caught within 150 candidate calls only
            ~90 % of the time (benchmarks/detection.py; target >= 95 %).
        min_calls: calls per arm before any verdict other than the tripwire.
        success_tolerance: a drop in success rate smaller than this (absolute) is
            acceptable: a regression needs a significant drop whose estimate exceeds it, and
            promotion needs the lower bound of the difference above minus it.
        latency_tolerance: relative slowdown that is acceptable (0.20 = +20 %), on the
            mean log-latency of successful calls, and on p95 once both arms have 60 calls.
        latency_floor_s: a latency regression must also add at least this much, in
            seconds, to the geometric mean: timing jitter of sub-millisecond calls is not a
            regression of an agent whose calls take a second (the seed had no floor, A1).
        ramp: candidate weights of the canary steps, in order (canary mode). Starting
            at 5 % exposes fewer calls while the candidate is least known and gives the
            baseline arm many more calls, which narrows the bound on the difference: with
            (0.05, 0.1, 0.25, 0.5) and 50 calls per step, 95 % -> 80 % is caught within 150
            candidate calls in ~97 % of runs, against ~94 % with (0.1, 0.25, 0.5) and 30.
        step_calls: candidate calls at a step, without a regression, before the next step
            (50: see ``ramp``; a healthy verdict advances sooner).
        horizon: candidate calls after which an undecided change is settled by
            ``on_inconclusive``.
        on_inconclusive: ``"keep"`` (promote: the test had ``horizon`` calls to find harm),
            ``"hold"`` (pause for a person) or ``"rollback"``.
        tripwire_consecutive: consecutive candidate failures that roll back at once,
            before ``min_calls`` (catastrophic failure).
        observe_only: record verdicts in the trail, never act (dry run).
        baseline_window_hours: switch mode: the frozen baseline is the baseline version's
            calls in this many hours before the change (all its calls if too few).
        cooldown_hours: after a rollback, the same patch is refused for this long.
        cs_tuning_n: candidate calls at which the confidence sequence is tightest.
        feedback_window_s: how late feedback may arrive (a thumbs-down, an evaluator): a
            promotion is decided on calls older than this only (their verdicts are in), and
            waits while it cannot be. 0 (the default) when every failure shows at once
            (the call raises, or a check runs in the call); set it to the delay of your
            slowest feedback when feedback decides success.
        watch_hours: after a promotion, the promoted version keeps being judged against
            the change's baseline for this long (late feedback on the canary's calls
            included); a regression is alerted once. 0 turns the watch off.
        on_watch_regression: ``"alert"`` (trail event ``watch_regressed``, notifiers, a
            WARNING) or ``"revert"`` (the same, and the baseline is restored through the
            adapter, as ``guard.revert`` does).
        metrics: guardrails on numeric metrics, by name (a :class:`~sil_core.Guardrail`, its
            dict, or ``None`` to turn a default off). A reserved metric that the calls
            carry is judged by default: ``score`` higher-is-better within 0.05 (on your
            scale), ``tokens_in``, ``tokens_out`` and ``cost_usd`` lower-is-better within
            +20 % (relative). Each judged metric takes its share of ``alpha``.
    """

    alpha: float = 0.10
    min_calls: int = 30
    success_tolerance: float = 0.02
    latency_tolerance: float = 0.20
    latency_floor_s: float = 0.005
    ramp: tuple[float, ...] = (0.05, 0.1, 0.25, 0.5)
    step_calls: int = 50
    horizon: int = 1000
    on_inconclusive: str = "keep"
    tripwire_consecutive: int = 5
    observe_only: bool = False
    baseline_window_hours: float = 24.0
    cooldown_hours: float = 24.0
    cs_tuning_n: int = 150
    feedback_window_s: float = 0.0
    watch_hours: float = 24.0
    on_watch_regression: str = "alert"
    metrics: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.metrics, Mapping):
            raise ConfigError(f"metrics must be a mapping of metric name to Guardrail, not {type(self.metrics).__name__}")
        bad = [k for k in self.metrics if not isinstance(k, str) or not NAME_RE.match(k)]
        if bad:
            raise ConfigError(f"metrics: {bad[0]!r} can never be recorded: a metric name is an ASCII identifier of "
                              "at most 64 characters (letters, digits, '_', '.')")
        object.__setattr__(self, "metrics", {k: Guardrail.coerce(v, k) for k, v in self.metrics.items()})
        if not 0 < self.alpha < 1:
            raise ConfigError("alpha must be in (0, 1)")
        if self.on_inconclusive not in _ON_INCONCLUSIVE:
            raise ConfigError(f"on_inconclusive must be one of {_ON_INCONCLUSIVE}")
        if not self.ramp or any(not 0 < w <= 1 for w in self.ramp) or list(self.ramp) != sorted(self.ramp):
            raise ConfigError("ramp must be increasing weights in (0, 1]")
        if self.min_calls < 1 or self.horizon < self.min_calls or self.tripwire_consecutive < 1:
            raise ConfigError("need 1 <= min_calls <= horizon and tripwire_consecutive >= 1")
        if self.success_tolerance < 0 or self.latency_tolerance < 0 or self.latency_floor_s < 0:
            raise ConfigError("tolerances must be >= 0")
        if self.feedback_window_s < 0 or self.watch_hours < 0:
            raise ConfigError("feedback_window_s and watch_hours must be >= 0")
        if self.on_watch_regression not in _ON_WATCH:
            raise ConfigError(f"on_watch_regression must be one of {_ON_WATCH}")

    def override(self, **changes: Any) -> "RolloutPolicy":
        """A copy with some fields changed."""
        return replace(self, **changes)

    def guardrails(self, names: Any) -> dict[str, Guardrail]:
        """The guardrails that judge metrics ``names`` (those the calls carry): the
        defaults of reserved names, overridden by ``metrics``; disabled ones left out."""
        out = {}
        for name in sorted(set(names)):
            rail = self.metrics.get(name) or DEFAULT_GUARDRAILS.get(name)
            if rail is not None and rail.enabled:
                out[name] = rail
        return out

    def __hash__(self) -> int:
        return hash(tuple(sorted((k, repr(v)) for k, v in self.as_dict().items())))

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["ramp"] = list(self.ramp)
        data["metrics"] = {name: rail.as_dict() for name, rail in self.metrics.items()}
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RolloutPolicy":
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        if "ramp" in known:
            known["ramp"] = tuple(known["ramp"])
        return cls(**known)
