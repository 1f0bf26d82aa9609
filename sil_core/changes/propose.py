"""Proposals: a patch becomes a stored change, refused or started.

A proposal is refused (stored in state ``rejected`` with its reason, and in the trail) when
its target has a change in flight, is pinned, or the same patch was rolled back within its
cooldown, when the adapter cannot give the baseline, or when the patch changes nothing.
Otherwise the change claims the target's head (compare-and-set: of two proposals at the
same moment one wins) and starts, unless it waits for approval.
"""

from __future__ import annotations

import copy
import time
from typing import TYPE_CHECKING, Any

from .._internal.failopen import fail_open
from .._internal.ids import new_id
from .._internal.validate import utf8_clean
from ..adapters import ConfigAdapter, merge_patch
from ..digest import legacy_patch_hash, patch_hash
from ..errors import ConfigError
from ..policy import RolloutPolicy
from ..rollout import Arm, Change, InvalidTransition, Mode, State
from ..routing import KEY_HASH
from ..versions import put_version
from .evidence import dump_cell, frozen_baseline
from .rows import ChangeRow, Head

if TYPE_CHECKING:
    from .manager import ChangeManager

__all__ = ("Proposals",)


class Proposals:
    def __init__(self, manager: "ChangeManager") -> None:
        self.m = manager

    def propose(self, target: str, patch: dict, *, adapter: ConfigAdapter | None, mode: str,
                policy: RolloutPolicy | None, actor: str | None = None, approve: bool = True,
                metadata: dict | None = None) -> Change:
        m = self.m
        if mode not in Mode.ALL:
            raise ConfigError(f"mode must be 'canary' or 'switch', not {mode!r}")
        if not isinstance(patch, dict) or not patch:
            raise ConfigError("a patch must be a non-empty dict")
        if not utf8_clean(patch):
            raise ConfigError("a patch's text must be storable: it has a lone surrogate (bytes that are not UTF-8 "
                              "decoded with 'surrogateescape'?) or a NUL character")
        adapter = adapter or m.adapters.get(target) or m.default_adapter()
        if adapter is None:
            raise ConfigError(f"propose({target!r}) needs an adapter= (or Guard(adapter=...))")
        policy = policy or m.default_policy()
        actor = actor or m.worker_id
        now = m.clock.time()
        head = m.rows.head(target)
        row = ChangeRow(
            id=new_id(), target=target, state=State.PROPOSED, mode=mode, patch=copy.deepcopy(patch),
            patch_hash=patch_hash(patch), policy=policy.as_dict(), created=now, updated=now, started=now,
            actor=actor, baseline_version=head.active, metadata=metadata or {},
            baseline_unversioned=not head.active, key_hash=KEY_HASH,
        )
        refused = self._refusal(head, row, now)
        if refused:
            return self.reject(row, refused)
        try:
            baseline_config = adapter.get_config(agent_id=target)
            if not isinstance(baseline_config, dict):
                raise TypeError(f"get_config returned {type(baseline_config).__name__}, not dict")
        except Exception as exc:
            m.trail("adapter_error", target, row.id, actor, stage="get_config", error=repr(exc))
            return self.reject(row, f"adapter.get_config failed: {exc!r}")
        spec = getattr(adapter, "spec", None)
        if callable(spec):  # after get_config: the spec carries the baseline's exact bytes
            with fail_open("adapter.spec"):
                row = row.replace(adapter_spec=spec())
        row = row.replace(baseline_version=put_version(m.store, target, baseline_config),
                          candidate_version=put_version(m.store, target, merge_patch(baseline_config, patch)),
                          backup=copy.deepcopy(baseline_config))
        if row.candidate_version == row.baseline_version:
            return self.reject(row, "the patch changes nothing")
        if m.rows.put(row, expect_rev=0) is None:
            raise RuntimeError("change id collision")
        won = []

        def claim(h: Head) -> Head:
            current = m.rows.row(h.change_id)
            won[:] = [current is None or not current.in_flight]
            return h.replace(change_id=row.id, active=h.active or row.baseline_version) if won[0] else h

        m.rows.update_head(target, claim)
        if not won[0]:
            return self.reject(row, "another change of this target was proposed at the same moment", rev=1)
        m.adapters[target] = adapter  # only now: a rejected proposal keeps the change in flight's adapter
        m.trail("change_proposed", target, row.id, actor, mode=mode, patch=patch, baseline_version=row.baseline_version,
                candidate_version=row.candidate_version, policy=row.policy, metadata=row.metadata)
        if not approve:
            m.invalidate(target)
            return Change.from_row(row)
        return self.start(target, row.id, actor)

    def _refusal(self, head: Head, row: ChangeRow, now: float) -> str | None:
        """Why a proposal cannot go ahead now (``None``: it can)."""
        in_flight = self.m.rows.row(head.change_id)
        if in_flight is not None and in_flight.in_flight:
            return f"change {in_flight.id} is still {in_flight.state}; one change in flight per target"
        if head.pinned and head.pin:
            return f"{row.target!r} is pinned to {head.active} by {head.pin.get('actor')}; unpin it first"
        hashes = {row.patch_hash, legacy_patch_hash(row.patch)}
        until = max((head.blocked[h] for h in hashes if h in head.blocked), default=None)
        if in_flight is not None and in_flight.state == State.ROLLED_BACK and in_flight.cooldown \
                and in_flight.patch_hash in hashes:
            # the head's block may not be written yet: a rollback commits its row first
            until = max(until or 0.0, in_flight.updated + in_flight.rollout_policy.cooldown_hours * 3600)
        if until is not None and until > now:
            when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(until))
            return f"this patch was rolled back; refused until {when} (cooldown)"
        return None

    def reject(self, row: ChangeRow, reason: str, *, rev: int | None = None) -> Change:
        m = self.m
        row = row.replace(state=State.REJECTED, reason=reason, updated=m.clock.time())
        with fail_open("change.reject"):  # kept, so that `sil changes` lists why it was refused
            m.rows.put(row, expect_rev=rev if rev is not None else 0)
        m.trail("change_rejected", row.target, row.id, row.actor, reason=reason, patch=row.patch)
        return Change.from_row(row)

    def approve(self, target: str, actor: str) -> Change:
        """Start a change that waits for approval (state ``proposed``)."""
        row = self.m.rows.latest(target)
        if row is None or row.state != State.PROPOSED:
            raise InvalidTransition(f"{target!r} has no change waiting for approval")
        return self.start(target, row.id, actor)

    def start(self, target: str, change_id: str, actor: str) -> Change:
        """Serve the candidate: a switch applies the patch through the adapter and freezes
        the baseline's window; a canary starts at the ramp's first weight."""
        m = self.m
        row, rev = m.rows.get(change_id)
        policy = row.rollout_policy
        cells = m.store.cells(target)
        now = m.clock.time()
        started: dict[str, Any] = {}
        if row.mode == Mode.SWITCH:
            adapter = m.adapter_for_row(target, row)
            try:
                applied = adapter.apply_config(agent_id=target, config_patch=row.patch)
            except Exception as exc:
                applied = exc
            if applied is not True:  # None is not success (docs/migrating-from-0.1.md, B8)
                why = f"adapter.apply_config returned {applied!r}" if not isinstance(applied, Exception) \
                    else f"adapter.apply_config raised {applied!r}"
                m.trail("adapter_error", target, change_id, actor, stage="apply_config", error=why)
                return self.reject(row, why, rev=rev)
            started.update(weight=1.0, frozen_baseline=frozen_baseline(
                m.store, target, row.baseline_version, policy, now=now, unversioned=row.baseline_unversioned))
        else:
            started.update(weight=policy.ramp[0],
                           snapshot_baseline=dump_cell(cells.get((row.baseline_version, Arm.BASELINE))))
        row = row.replace(state=State.running(row.mode), updated=now, started=now,
                          snapshot_candidate=dump_cell(cells.get((row.candidate_version, Arm.CANDIDATE))), **started)
        if m.rows.put(row, expect_rev=rev) is None:
            return Change.from_row(m.rows.row(change_id))
        if row.mode == Mode.SWITCH:
            m.rows.update_head(target, lambda h: h.replace(active=row.candidate_version))
        m.invalidate(target)
        with m.lock:
            m.in_flight.add(target)
        m.trail("change_applied", target, change_id, actor, mode=row.mode, weight=row.weight,
                candidate_version=row.candidate_version)
        m.notify("change_applied", target, f"{target}: {row.mode} of {row.candidate_version} "
                 f"(from {row.baseline_version}) started at weight {row.weight:.0%}", change_id=change_id)
        return Change.from_row(row)
