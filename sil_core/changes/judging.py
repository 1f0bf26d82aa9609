"""Judging changes: the tripwire fed by written records, verdicts turned into actions, and
the watch over a promoted version.

After each batch is written, :meth:`Judging.observe` adds the candidate calls (and earlier
calls that feedback judged since) to the change's tripwire row and returns the targets
worth judging; :meth:`Judging.evaluate` reads the arms' cells, asks
:func:`~sil_core.detect.decision.decide` what to do and does it through
:class:`~sil_core.changes.act.Actions`. Per-change state kept here (the p95 looks, the
tripwire as last seen, the watch's schedule) is dropped when the change ends.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._internal.failopen import fail_open, logger as _log
from ..aggregates import Cell
from ..detect import TripwireState, Verdict, judge
from ..detect.decision import ADVANCE, PAUSE, PROMOTE, ROLLBACK, Decision, decide, settle
from ..detect.detector import p95_look
from ..records import CallRecord, Outcome
from ..rollout import Arm, Mode, State
from ..routing import TargetView
from ..watch import post_promotion, settled
from .evidence import arms, load_cell
from .rows import ChangeRow

if TYPE_CHECKING:
    from .manager import ChangeManager

__all__ = ("MAX_RESTORE_ATTEMPTS", "WATCH_EVERY_S", "Judging")

#: how often a promoted version's watch judges it at most (per worker)
WATCH_EVERY_S = 5.0
MAX_RESTORE_ATTEMPTS = 10


class Judging:
    def __init__(self, manager: "ChangeManager", *, watch_every_s: float = WATCH_EVERY_S) -> None:
        self.m = manager
        self.watch_every_s = watch_every_s
        self._wires: dict[str, TripwireState] = {}  # change id -> the tripwire row as last seen
        self._p95_looks: dict[str, int] = {}
        self._watch_looks: dict[str, float] = {}  # change id -> when its watch judges next
        self._scan: tuple[float, bool] = (0.0, False)  # (valid until, found) of any_in_flight

    def forget(self, change_id: str, *, ended_watch: bool = True) -> None:
        """Drop what this worker kept about a change that ended."""
        self._p95_looks.pop(change_id, None)
        self._wires.pop(change_id, None)
        if ended_watch:
            self._watch_looks.pop(change_id, None)

    # -- evidence --------------------------------------------------------------------------
    def evidence(self, row: ChangeRow) -> tuple[Cell, Cell]:
        """``(baseline, candidate)`` cells of a change: its own calls only."""
        return arms(self.m.store, row)

    def current_verdict(self, row: ChangeRow) -> Verdict:
        return judge(*self.evidence(row), row.rollout_policy)

    # -- the tripwire ----------------------------------------------------------------------
    def observe(self, calls: list[CallRecord], judged: list[CallRecord] = ()) -> set[str]:
        """Feed written records, and earlier canary calls that feedback judged since, to the
        tripwires; returns targets worth judging now.

        The tripwire (:class:`~sil_core.detect.TripwireState`, a row in the store shared by
        every worker) watches a change's first ``min_calls`` candidate calls, before the
        statistical test has its minimum sample, and fires on ``tripwire_consecutive``
        failures in a row unless the baseline fails as well since the run began (an outage,
        not the change).
        """
        m = self.m
        with m.lock:
            in_flight, watching = set(m.in_flight), set(m.watching)
        due: set[str] = set()
        fresh: dict[str, tuple[TargetView, list[CallRecord], list[CallRecord]]] = {}
        for r in calls:
            if r.target in watching and r.success is not None:
                due.add(r.target)  # a promoted version under watch
            if r.target not in in_flight or r.arm is None or r.success is None:
                continue
            due.add(r.target)
            v = m.router.views.get(r.target)
            if r.arm == Arm.CANDIDATE and v is not None and _serves(v, r):
                fresh.setdefault(v.change_id, (v, [], []))[1].append(r)
        for r in judged:
            if r.success is None:
                continue
            v = m.view_now(r.target)  # a worker that only took feedback may not know the change yet
            if v.change_id is not None and v.state == State.PROMOTED and r.target in m.watching:
                due.add(r.target)  # late feedback on the canary of a promoted version under watch
                continue
            if v.change_id is None or v.state not in (State.CANARY, State.SWITCHED, State.PAUSED):
                continue
            due.add(r.target)
            if r.arm == Arm.CANDIDATE and _serves(v, r):
                fresh.setdefault(v.change_id, (v, [], []))[2].append(r)
        for view, records, verdicts in fresh.values():
            with fail_open("tripwire"):
                self._trip(view, records, verdicts)
        return due

    def _trip(self, view: TargetView, records: list[CallRecord], judged: list[CallRecord]) -> None:
        """Add candidate calls to the change's tripwire row (compare-and-set), and fire it."""
        m, cid = self.m, view.change_id
        seen = self._wires.get(cid)
        if seen is not None and (seen.fired or (not judged and seen.full()
                                                and all(r.ts >= seen.calls[-1][0] for r in records))):
            return  # fired already, or every new call is past the window: nothing to write
        policy = view.policy
        for _ in range(20):
            got = m.store.kv_get("tripwire", cid)
            if got is None:
                state, rev = TripwireState(policy.tripwire_consecutive, policy.min_calls), 0
            else:
                state, rev = TripwireState.from_dict(got[0]), got[1]
            if state.fired:
                break
            changed = False
            for r in records:
                changed |= state.add(r.ts, r.id, bool(r.success), judged=_judged_failed(r))
            for r in judged:
                changed |= state.add(r.ts, r.id, bool(r.success), judged=_judged_failed(r), override=True)
            if not changed:
                break
            state.check(view.started, lambda since: self._baseline_since(view, since), now=m.clock.time(),
                        by=m.worker_id)
            if m.store.kv_put("tripwire", cid, state.as_dict(), expect_rev=rev) is not None:
                break
        else:
            return
        self._wires[cid] = state

    def _baseline_since(self, view: TargetView, since: float) -> tuple[int, int]:
        """``(decided calls, failures)`` of the baseline arm since ``since`` (all workers)."""
        if view.mode == Mode.SWITCH:
            return 0, 0  # the baseline is a frozen window: it serves nothing now
        rows = self.m.store.read_calls(view.target, since=since, version=view.baseline, limit=5000)
        decided = [r.success for r in rows if r.arm == Arm.BASELINE and r.success is not None]
        return len(decided), decided.count(False)

    def _tripwire_fired(self, change_id: str) -> dict | None:
        """The evidence of the change's tripwire if it fired (in any worker)."""
        seen = self._wires.get(change_id)
        if seen is not None and seen.fired:
            return seen.fired
        got = self.m.store.kv_get("tripwire", change_id)
        return got[0].get("fired") if got else None

    def any_in_flight(self) -> bool:
        """Whether any target of the store has a change in flight (this worker's own view,
        else a scan of the target heads, at most every few seconds): feedback on a call
        served elsewhere is looked up in the store only then."""
        m = self.m
        with m.lock:
            if m.in_flight:
                return True
        now = m.clock.monotonic()
        if now < self._scan[0]:
            return self._scan[1]
        found = any((row := m.rows.row(head.change_id)) is not None and row.in_flight for _, head in m.rows.heads())
        self._scan = (now + max(m.refresh_s, 5.0), found)
        return found

    # -- judging and acting ----------------------------------------------------------------
    def evaluate(self, target: str) -> Verdict | None:
        """Judge the target's change in flight and act on the verdict (one worker acts)."""
        m = self.m
        row = m.rows.latest(target)
        if row is None:
            return None
        if row.state == State.RESTORE_FAILED:
            if m.clock.time() >= row.restore.get("next_at", 0) and \
                    row.restore.get("attempts", 0) < MAX_RESTORE_ATTEMPTS:
                m.actions.rollback(target, None, actor=m.worker_id)
            return None
        if row.requested and row.serving:
            return self._requested(row)
        if row.state == State.PROMOTED:
            return self._watch_promoted(row)
        if row.state not in (State.CANARY, State.SWITCHED):
            return None
        policy = row.rollout_policy
        base, cand = self.evidence(row)
        look = p95_look(cand.lat_n)
        check_p95 = look > self._p95_looks.get(row.id, -1)
        if check_p95:
            self._p95_looks[row.id] = look
        verdict = judge(base, cand, policy, check_p95=check_p95)
        n_b = cand.successes + cand.failures
        decision = decide(verdict, policy, candidate_calls=n_b, last_step=row.last_step,
                          step_started_n=row.step_started_n,
                          tripwire=self._tripwire_fired(row.id) if verdict.kind != Verdict.REGRESSED else None)
        if decision.action == PROMOTE and policy.feedback_window_s > 0:
            decision = settle(decision, policy, settled(m.store, row, base, cand, policy.feedback_window_s,
                                                        now=m.clock.time()))
        self._act(row, decision, n_b)
        return decision.verdict

    def _act(self, row: ChangeRow, decision: Decision, candidate_calls: int) -> None:
        m, action, verdict = self.m, decision.action, decision.verdict
        if action in (ROLLBACK, PROMOTE, PAUSE) and row.rollout_policy.observe_only:
            if row.observed != action:
                got = m.rows.get(row.id)
                if got and got[0].observed != action and \
                        m.rows.put(got[0].replace(observed=action), expect_rev=got[1]) is not None:
                    m.trail("verdict", row.target, row.id, verdict=verdict.as_dict(), observe_only=True, would=action)
            return
        if action == ROLLBACK:
            m.actions.rollback(row.target, verdict, actor=m.worker_id)
        elif action == PROMOTE:
            m.actions.promote(row.target, verdict, actor=m.worker_id)
        elif action == PAUSE:
            m.actions.set_paused(row.target, True, actor=m.worker_id, verdict=verdict)
        elif action == ADVANCE:
            m.actions.advance(row, candidate_calls)

    def _requested(self, row: ChangeRow) -> Verdict:
        """Serve an action a process without the adapter asked for (``Guard.request``)."""
        request = row.requested
        rollback = request["action"] == "rollback"
        verdict = Verdict(Verdict.REGRESSED if rollback else Verdict.HEALTHY, f"requested by {request['actor']}",
                          "manual")
        if rollback:
            self.m.actions.rollback(row.target, verdict, actor=request["actor"])
        else:
            self.m.actions.promote(row.target, verdict, actor=request["actor"])
        return verdict

    def _watch_promoted(self, row: ChangeRow) -> Verdict | None:
        """Judge a promoted version against its change's baseline while its watch lasts;
        alert once on a regression (and revert, if the policy says so)."""
        m, policy, cid, target = self.m, row.rollout_policy, row.id, row.target
        if m.clock.time() > row.watch_until or row.watch_alerted or row.kind == "revert":
            with m.lock:
                m.watching.discard(target)
            self._watch_looks.pop(cid, None)
            return None
        if m.clock.monotonic() < self._watch_looks.get(cid, 0.0):
            return None
        self._watch_looks[cid] = m.clock.monotonic() + self.watch_every_s
        base, cand = self.evidence(row)
        if base.successes + base.failures < policy.min_calls and row.watch_baseline:
            base = load_cell(row.watch_baseline)  # a canary promoted early: the baseline's own history
        cand.add(post_promotion(m.store.cells(target), row))
        verdict = judge(base, cand, policy)
        if verdict.kind != Verdict.REGRESSED:
            return verdict
        got = m.rows.get(cid)
        if got is None or got[0].watch_alerted:
            return verdict
        if m.rows.put(got[0].replace(watch_alerted=m.clock.time()), expect_rev=got[1]) is None:
            return verdict  # another worker alerts
        reason = f"after its promotion, {verdict.reason}"
        m.trail("watch_regressed", target, cid, verdict=verdict.as_dict(), version=row.candidate_version,
                action=policy.on_watch_regression)
        m.notify("watch_regressed", target, f"{target}: promoted {row.candidate_version} regressed: {reason}",
                 change_id=cid, level="warning")
        _log.warning("sil-guard: %s: the promoted version %s regressed: %s", target, row.candidate_version, reason)
        if policy.on_watch_regression == "revert":
            with fail_open("watch.revert"):
                m.operator.revert(target, row.baseline_version, adapter=None, actor=m.worker_id)
        with m.lock:
            m.watching.discard(target)
        return Verdict(verdict.kind, reason, verdict.metric, verdict.evidence)

    def tick(self) -> None:
        """Periodic work of this worker: restores to retry, requests to serve, horizons."""
        with self.m.lock:
            targets = list(self.m.in_flight | self.m.watching)
        for target in targets:
            with fail_open("change.tick"):
                self.evaluate(target)


def _judged_failed(record: CallRecord) -> bool:
    """A call that returned normally and was failed by a later verdict (feedback, a check)."""
    return record.outcome == Outcome.OK and record.success is False


def _serves(view: TargetView, record: CallRecord) -> bool:
    """Whether a candidate record was served by the view's change (not an earlier change
    with the same candidate version; a few seconds of clock skew between hosts allowed)."""
    return record.version == view.candidate and record.ts >= view.started - 5.0
