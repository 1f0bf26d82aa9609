"""The decision table: from a change's verdict to what happens to the change. Pure.

:func:`decide` maps what the detector said (and the tripwire, the horizon, the ramp) to
one :class:`Decision`; :func:`settle` re-judges a promotion on calls older than the
feedback window. Neither reads a store or a clock: the change engine gathers the inputs
and acts on the result (see ``docs/statistics.md``, "From verdict to action").

==========================================  ===================================
reading                                     action
==========================================  ===================================
regressed (statistics or tripwire)          ``rollback``
healthy, at the last ramp step              ``promote`` (settled first, if a
                                            feedback window is set)
horizon reached without a decision          ``on_inconclusive``: ``promote``,
                                            ``pause`` or ``rollback``
healthy, or ``step_calls`` at this step     ``advance`` (next ramp weight)
anything else                               ``None`` (keep collecting)
==========================================  ===================================
"""

from __future__ import annotations

from dataclasses import dataclass

from ..aggregates import Cell
from ..policy import RolloutPolicy
from .detector import judge
from .verdict import Verdict

__all__ = ("Decision", "decide", "settle", "tripwire_verdict")

ROLLBACK, PROMOTE, PAUSE, ADVANCE = "rollback", "promote", "pause", "advance"
_INCONCLUSIVE_ACTION = {"keep": PROMOTE, "hold": PAUSE, "rollback": ROLLBACK}


@dataclass(frozen=True)
class Decision:
    """``action`` is ``rollback``, ``promote``, ``pause``, ``advance`` or ``None``;
    ``verdict`` the reading it rests on (rewritten when the tripwire or the horizon decided)."""

    action: str | None
    verdict: Verdict


def tripwire_verdict(verdict: Verdict, fired: dict, policy: RolloutPolicy) -> Verdict:
    """The verdict of a change whose tripwire fired (``fired``: its evidence)."""
    later = fired.get("judged_failed") or 0
    return Verdict(Verdict.REGRESSED, f"{policy.tripwire_consecutive} consecutive candidate failures "
                   "(tripwire, before the minimum sample" + (f"; {later} judged failed after they returned" if later else "")
                   + ")", "tripwire", {**verdict.evidence, "tripwire": fired})


def decide(verdict: Verdict, policy: RolloutPolicy, *, candidate_calls: int, last_step: bool,
           step_started_n: int = 0, tripwire: dict | None = None) -> Decision:
    """What to do with a change in flight given the detector's ``verdict``.

    ``candidate_calls``: decided candidate calls so far; ``last_step``: the ramp is at its
    last weight (always for a switch); ``step_started_n``: candidate calls when this step
    began; ``tripwire``: the tripwire's evidence if it fired. ``observe_only`` is not
    applied here: the caller records the action instead of taking it.
    """
    if tripwire and verdict.kind != Verdict.REGRESSED:
        verdict = tripwire_verdict(verdict, tripwire, policy)
    if verdict.kind == Verdict.REGRESSED:
        return Decision(ROLLBACK, verdict)
    if verdict.kind == Verdict.HEALTHY and last_step:
        return Decision(PROMOTE, verdict)
    if candidate_calls >= policy.horizon:
        return Decision(_INCONCLUSIVE_ACTION[policy.on_inconclusive], Verdict(
            verdict.kind, f"horizon of {policy.horizon} candidate calls reached without a decision: "
            f"on_inconclusive={policy.on_inconclusive!r}", "horizon", verdict.evidence))
    if not last_step and not policy.observe_only and (
            verdict.kind == Verdict.HEALTHY or candidate_calls - step_started_n >= policy.step_calls):
        return Decision(ADVANCE, verdict)
    return Decision(None, verdict)


def settle(decision: Decision, policy: RolloutPolicy, settled: tuple[Cell, Cell] | None) -> Decision:
    """A promotion judged again on ``settled``: the arms' calls older than the feedback
    window (``None`` when more calls arrived within it than can be read back). Feedback
    that arrives late can then still turn it into a rollback; until the settled calls are
    enough, it waits."""
    window_s = policy.feedback_window_s
    verdict = decision.verdict
    if settled is None:
        return Decision(None, Verdict(Verdict.INCONCLUSIVE, f"healthy, but more calls than can be read back "
                                      f"arrived in the last {window_s:g} s: waiting for feedback", verdict.metric,
                                      verdict.evidence))
    again = judge(*settled, policy)
    evidence = {**again.evidence, "feedback_window_s": window_s}
    if again.kind == Verdict.REGRESSED:
        return Decision(ROLLBACK, Verdict(again.kind, again.reason, again.metric, evidence))
    settled_n = settled[1].successes + settled[1].failures
    if again.kind == Verdict.HEALTHY or (verdict.metric == "horizon" and settled_n >= policy.horizon):
        reason = verdict.reason if verdict.metric == "horizon" else \
            f"{again.reason} (calls older than the {window_s:g} s feedback window)"
        return Decision(PROMOTE, Verdict(verdict.kind, reason, verdict.metric, evidence))
    return Decision(None, Verdict(Verdict.INCONCLUSIVE, f"healthy on every call, not yet on calls older than the "
                                  f"{window_s:g} s feedback window: waiting for feedback", again.metric, evidence))
