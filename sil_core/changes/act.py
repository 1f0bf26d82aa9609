"""Acting on a change: lease, then adapter, then commit.

A move that calls the user's adapter (a promotion, a rollback) first takes a short lease on
the change row by compare-and-set, so exactly one worker acts; the result is committed
with the lease's revision and the lease released. A restore that fails leaves the change
``restore_failed`` and is retried with backoff (see ``docs/lifecycle.md``).
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

from .._internal.failopen import fail_open, report
from ..aggregates import Cell
from ..detect import Verdict
from ..rollout import Change, InvalidTransition, Mode, State, check_transition
from .evidence import dump_cell, frozen_baseline
from .rows import ChangeRow

if TYPE_CHECKING:
    from .manager import ChangeManager

__all__ = ("LEASE_S", "Actions")

LEASE_S = 60.0
_ACTIVE = {State.CANARY, State.SWITCHED, State.PAUSED}


class Actions:
    def __init__(self, manager: "ChangeManager") -> None:
        self.m = manager

    def acquire(self, target: str, allowed: set[str]) -> tuple[ChangeRow, int] | None:
        """Lease the target's latest change if it is in one of ``allowed`` states and no
        one else holds a lease on it."""
        m = self.m
        got = m.rows.latest_with_rev(target)
        if got is None:
            return None
        row, rev = got
        now = m.clock.time()
        if row.state not in allowed or (row.lease and row.lease["until"] > now):
            return None  # someone (another worker, or another thread of this one) is acting
        row = row.replace(lease={"owner": m.worker_id, "until": now + LEASE_S})
        new_rev = m.rows.put(row, expect_rev=rev)
        return (row, new_rev) if new_rev is not None else None

    def commit(self, row: ChangeRow, rev: int, **fields: Any) -> ChangeRow | None:
        """Write the move (releasing the lease and any request); ``None`` if it was lost."""
        check_transition(row.state, fields.get("state", row.state))
        row = row.replace(**fields, updated=self.m.clock.time(), lease=None, requested=None)
        ok = self.m.rows.put(row, expect_rev=rev) is not None
        self.m.invalidate(row.target)
        return row if ok else None

    def rollback(self, target: str, verdict: Verdict | None, *, actor: str, cooldown: bool = True,
                 restore: bool = True) -> bool:
        """Restore the baseline (switch mode: through the adapter) and end the change;
        ``cooldown=False`` (a change superseded by a newer one, not judged bad) does not
        refuse its patch afterwards; ``restore=False`` writes nothing through the adapter."""
        m = self.m
        acquired = self.acquire(target, _ACTIVE | {State.RESTORE_FAILED})
        if acquired is None:
            return False
        row, rev = acquired
        adapter = m.adapter_for_row(target, row) if row.mode == Mode.SWITCH and restore else None
        if row.mode == Mode.SWITCH and restore and adapter is None:
            self.commit(row, rev)  # release: a worker holding the adapter will act
            return False
        first = row.state != State.RESTORE_FAILED
        verdict_dict = verdict.as_dict() if verdict else row.verdict
        if first:
            m.trail("rollback_started", target, row.id, actor, verdict=verdict_dict)
        error = None if adapter is None else self._restore(adapter, target, row)
        if error is not None:
            return self._restore_failed(row, rev, verdict_dict, error, actor, first)
        done = self.commit(row, rev, state=State.ROLLED_BACK, verdict=verdict_dict,
                           reason=verdict.reason if verdict else row.reason, cooldown=cooldown)
        if done is None:
            return False
        until = m.clock.time() + row.rollout_policy.cooldown_hours * 3600
        m.rows.update_head(target, lambda h: h.replace(
            active=row.baseline_version, blocked={**h.blocked, row.patch_hash: until} if cooldown else h.blocked))
        m.note(done)
        m.trail("rollback_succeeded", target, row.id, actor, restored_version=row.baseline_version, mode=row.mode,
                restore_attempts=row.restore.get("attempts", 0), cooldown=cooldown,
                **({} if restore else {"restored": False}))
        m.notify("rollback_succeeded", target, f"{target}: rolled back {row.candidate_version} to "
                 f"{row.baseline_version}" + (f" ({verdict.reason})" if verdict else ""), change_id=row.id)
        self.tell_strategy(done, verdict)
        return True

    def _restore(self, adapter: Any, target: str, row: ChangeRow) -> str | None:
        """Put the baseline config back through the adapter; the error, or ``None``."""
        remember = getattr(adapter, "remember", None)
        if callable(remember) and row.adapter_spec:
            with fail_open("adapter.remember"):
                remember(row.adapter_spec)
        try:
            adapter.rollback_config(agent_id=target, backup_config=copy.deepcopy(row.backup))
            is_restored = getattr(adapter, "is_restored", None)
            if callable(is_restored):
                ok = bool(is_restored(agent_id=target, backup_config=copy.deepcopy(row.backup)))
            else:
                ok = adapter.get_config(agent_id=target) == row.backup
            if not ok:
                return "after rollback_config the adapter still reports a different config"
        except Exception as exc:
            return repr(exc)
        return None

    def _restore_failed(self, row: ChangeRow, rev: int, verdict_dict: dict | None, error: str, actor: str,
                        first: bool) -> bool:
        m = self.m
        attempts = row.restore.get("attempts", 0) + 1
        self.commit(row, rev, state=State.RESTORE_FAILED, verdict=verdict_dict,
                    restore={"attempts": attempts, "next_at": m.clock.time() + min(300.0, 2.0 ** attempts),
                             "error": error})
        if first:  # recorded and alerted once, never reported as a success
            m.trail("restore_failed", row.target, row.id, actor, error=error)
            m.notify("restore_failed", row.target, f"{row.target}: ROLLBACK FAILED, the baseline config was NOT "
                     f"restored: {error}; retrying with backoff", change_id=row.id)
        return False

    def promote(self, target: str, verdict: Verdict | None, *, actor: str) -> bool:
        """Make the candidate the active version (canary mode: through the adapter)."""
        m = self.m
        acquired = self.acquire(target, _ACTIVE)
        if acquired is None:
            return False
        row, rev = acquired
        if row.mode == Mode.CANARY:
            adapter = m.adapter_for_row(target, row)
            if adapter is None:
                self.commit(row, rev)
                return False
            try:
                applied = adapter.apply_config(agent_id=target, config_patch=copy.deepcopy(row.patch))
            except Exception as exc:
                applied = exc
            if applied is not True:
                m.trail("adapter_error", target, row.id, actor, stage="apply_config (promotion)", error=repr(applied))
                self.commit(row, rev, state=State.PAUSED, reason=f"promotion failed: apply_config gave {applied!r}")
                return False
        verdict_dict = verdict.as_dict() if verdict else None
        policy = row.rollout_policy
        watch: dict[str, Any] = {}
        if policy.watch_hours > 0:
            promoted = m.store.cells(target).get((row.candidate_version, "")) or Cell()
            watch = {"snapshot_promoted": dump_cell(promoted),
                     "watch_until": m.clock.time() + policy.watch_hours * 3600,
                     "watch_baseline": row.frozen_baseline or frozen_baseline(
                         m.store, target, row.baseline_version, policy, now=m.clock.time(),
                         unversioned=row.baseline_unversioned)}
        done = self.commit(row, rev, state=State.PROMOTED, verdict=verdict_dict, weight=1.0,
                           reason=verdict.reason if verdict else "promoted", **watch)
        if done is None:
            return False
        m.rows.update_head(target, lambda h: h.replace(active=row.candidate_version))
        m.note(done)
        m.trail("promoted", target, row.id, actor, verdict=verdict_dict, version=row.candidate_version)
        m.notify("promoted", target, f"{target}: promoted {row.candidate_version}"
                 + (f" ({verdict.reason})" if verdict else ""), change_id=row.id)
        self.tell_strategy(done, verdict)
        return True

    def set_paused(self, target: str, paused: bool, *, actor: str, verdict: Verdict | None = None) -> bool:
        m = self.m
        got = m.rows.latest_with_rev(target)
        if got is None:
            raise InvalidTransition(f"{target!r} has no change in flight")
        row, rev = got
        new = State.PAUSED if paused else State.running(row.mode)
        if row.state == new:
            return True
        check_transition(row.state, new)
        row = row.replace(state=new, updated=m.clock.time(), verdict=verdict.as_dict() if verdict else row.verdict)
        if m.rows.put(row, expect_rev=rev) is None:
            return False
        m.invalidate(target)
        m.trail("paused" if paused else "resumed", target, row.id, actor, verdict=verdict.as_dict() if verdict else None)
        return True

    def advance(self, row: ChangeRow, candidate_calls: int) -> None:
        """Move a canary to its ramp's next weight (once, whichever worker gets there first)."""
        m = self.m
        got = m.rows.get(row.id)
        if got is None:
            return
        current, rev = got
        if current.state != State.CANARY or current.step != row.step:
            return
        step = current.step + 1
        weight = current.rollout_policy.ramp[step]
        current = current.replace(step=step, weight=weight, step_started_n=candidate_calls, updated=m.clock.time())
        if m.rows.put(current, expect_rev=rev) is not None:
            m.invalidate(row.target)
            m.trail("arm_weight_changed", row.target, row.id, weight=weight, step=step, candidate_calls=candidate_calls)

    def tell_strategy(self, row: ChangeRow, verdict: Verdict | None) -> None:
        hook = getattr(self.m.strategy(), "on_verdict", None)
        if callable(hook):
            try:
                hook(Change.from_row(row, verdict), verdict)
            except Exception as exc:
                report("strategy.on_verdict", exc)
                self.m.trail("strategy_error", row.target, row.id, stage="on_verdict", error=repr(exc))
