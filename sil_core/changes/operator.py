"""What people do to changes: ask the workers to act, pin a version, revert to one.

``request`` is for a process that cannot rebuild the adapter (the CLI): it marks the change
row, and a worker that holds the adapter acts within about a second. ``pin`` holds a
version (proposals are refused until ``unpin``); ``revert`` restores an earlier version
through the adapter as a change of its own, promoted at once (a person chose it).
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

from .._internal.ids import new_id
from ..adapters import ConfigAdapter
from ..digest import patch_hash
from ..errors import ConfigError
from ..rollout import Change, InvalidTransition, Mode, State
from ..versions import get_version, put_version
from .rows import ChangeRow, Head

if TYPE_CHECKING:
    from .manager import ChangeManager

__all__ = ("Operator",)


class Operator:
    def __init__(self, manager: "ChangeManager") -> None:
        self.m = manager

    def request(self, target: str, action: str, actor: str) -> bool:
        """Ask the workers that hold the adapter to promote or roll back (used by the CLI)."""
        m = self.m
        got = m.rows.latest_with_rev(target)
        if got is None or not got[0].serving:
            raise InvalidTransition(f"{target!r} has no change in flight")
        row, rev = got
        row = row.replace(requested={"action": action, "actor": actor, "ts": m.clock.time()})
        return m.rows.put(row, expect_rev=rev) is not None

    def pin(self, target: str, version: str, *, adapter: ConfigAdapter | None, actor: str) -> None:
        """Serve ``version`` (restored through the adapter, if any) and hold it: proposals
        are refused until :meth:`unpin`."""
        m = self.m
        row = m.rows.latest(target)
        if row is not None and row.in_flight:
            raise InvalidTransition(f"{target!r} has change {row.id} in flight; promote or roll it back first")
        config = get_version(m.store, target, version)
        if config is None:
            raise ConfigError(f"{target!r} has no version {version!r}")
        adapter = adapter or m.adapters.get(target) or m.default_adapter()
        if adapter is not None:
            adapter.rollback_config(agent_id=target, backup_config=copy.deepcopy(config))
        pin = {"actor": actor, "ts": m.clock.time()}
        m.rows.update_head(target, lambda h: h.replace(active=version, pinned=True, pin=pin))
        m.trail("pinned", target, None, actor, version=version, through_adapter=adapter is not None)

    def adopt(self, target: str, config: dict, *, actor: str) -> str:
        """Make ``config`` (what the target already serves: nothing is written through the
        adapter) the target's active version without a change: the baseline its later changes
        are judged against (e.g. a skill an agent has just created). Returns the version."""
        m = self.m
        row = m.rows.latest(target)
        if row is not None and row.in_flight:
            raise InvalidTransition(f"{target!r} has change {row.id} in flight; promote or roll it back first")
        version = put_version(m.store, target, config)
        m.rows.update_head(target, lambda h: h.replace(active=version))
        m.trail("version_adopted", target, None, actor, version=version)
        return version

    def unpin(self, target: str, *, actor: str) -> bool:
        """Let changes be proposed again; ``False`` if the target was not pinned."""
        was = []

        def clear(h: Head) -> Head:
            was[:] = [h.pinned]
            return h.replace(pinned=False, pin=None)

        self.m.rows.update_head(target, clear)
        if was and was[0]:
            self.m.trail("unpinned", target, None, actor)
        return bool(was and was[0])

    def revert(self, target: str, to: str | None, *, adapter: ConfigAdapter | None, actor: str) -> Change:
        """Restore an earlier version through the adapter, recorded as a change of its own
        (promoted at once: a person chose it). ``to`` defaults to the version the last
        promoted change replaced, whose patch is then refused for its cooldown."""
        m = self.m
        head = m.rows.head(target)
        latest = m.rows.row(head.change_id)
        if latest is not None and latest.in_flight:
            raise InvalidTransition(f"{target!r} has change {latest.id} {latest.state}; roll it back instead")
        undone = None
        if to is None:
            promoted = [c for c in m.rows.all(target) if c.state == State.PROMOTED and c.kind != "revert"]
            if not promoted:
                raise InvalidTransition(f"{target!r} has no promoted change to revert; name a version with --to")
            undone = promoted[-1]
            to = undone.baseline_version
        config = get_version(m.store, target, to)
        if config is None:
            raise ConfigError(f"{target!r} has no version {to!r}")
        current = head.active
        if to == current:
            raise InvalidTransition(f"{target!r} already serves {to}")
        adapter = adapter or m.adapter_for(target)
        if adapter is None:
            raise ConfigError(f"reverting {target!r} restores a config through its ConfigAdapter, and none is "
                              "available here: revert where the adapter lives (guard.revert), or use an adapter "
                              "that can be rebuilt from the store")
        now = m.clock.time()
        row = ChangeRow(
            id=new_id(), target=target, kind="revert", state=State.PROMOTED, mode=Mode.SWITCH,
            patch=copy.deepcopy(config), patch_hash=patch_hash(config), policy=m.default_policy().as_dict(),
            created=now, updated=now, started=now, actor=actor, weight=1.0, baseline_version=current,
            candidate_version=to, reason=f"reverted to {to} by {actor}",
        )
        try:
            before = adapter.get_config(agent_id=target)
            row = row.replace(backup=copy.deepcopy(before) if isinstance(before, dict) else None)
            adapter.rollback_config(agent_id=target, backup_config=copy.deepcopy(config))
            error = None if adapter.get_config(agent_id=target) == config else \
                "after rollback_config the adapter reports a different config"
        except Exception as exc:
            error = repr(exc)
        if error is not None:
            m.trail("adapter_error", target, row.id, actor, stage="revert", error=error)
            return m.proposals.reject(row, f"revert to {to} failed: {error}")
        m.rows.put(row, expect_rev=0)

        def point(h: Head) -> Head:
            blocked = h.blocked
            if undone is not None:
                blocked = {**blocked, undone.patch_hash: now + undone.rollout_policy.cooldown_hours * 3600}
            return h.replace(active=to, change_id=row.id, blocked=blocked)

        m.rows.update_head(target, point)
        m.trail("reverted", target, row.id, actor, from_version=current, to_version=to,
                undone_change=undone.id if undone else None)
        m.notify("reverted", target, f"{target}: reverted from {current or '-'} to {to} by {actor}", change_id=row.id)
        return Change.from_row(row)
