"""The change control plane of a Guard: propose, read and move changes, pin and revert
versions, read the trail. Each method blocks on the store (and, where it says so, the
adapter); its async twin is in ``async_control.py``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._internal.failopen import fail_open
from .adapters import ConfigAdapter
from .aggregates import Stats
from .detect.verdict import Verdict
from .errors import ConfigError
from .policy import RolloutPolicy
from .rollout import Change, State
from .trail import TrailReport, verify_trail
from .versions import list_versions

if TYPE_CHECKING:
    from .changes import ChangeManager
    from .store import Store

__all__ = ("ChangeControl",)


class ChangeControl:
    """Mixed into :class:`~sil_core.Guard`."""

    _changes: "ChangeManager"
    store: "Store"
    mode: str

    def propose(self, target: str, patch: dict, *, adapter: ConfigAdapter | None = None, mode: str | None = None,
                policy: RolloutPolicy | None = None, actor: str | None = None, approve: bool = True,
                metadata: dict | None = None) -> Change:
        """Roll a config patch out under guard and return the :class:`Change`.

        ``mode="canary"`` serves baseline and candidate side by side (read the arm's config
        from ``guard.call(...).config`` or :func:`current_call`); ``mode="switch"`` applies
        the patch globally through the adapter and compares with a frozen baseline window.
        A target has at most one change in flight: a proposal meanwhile is ``rejected``, as
        is one for a pinned target. ``approve=False`` leaves it ``proposed`` until
        :meth:`approve`. ``metadata`` (why it was proposed) goes to the trail's
        ``change_proposed`` event, not to the config.

        Blocks on the store and the adapter; use :meth:`apropose` in a coroutine.
        """
        self.flush()  # the baseline's evidence includes every call made before the proposal
        return self._changes.propose(target, patch, adapter=adapter, mode=mode or self.mode, policy=policy,
                                     actor=actor, approve=approve, metadata=metadata)

    def change(self, target: str, *, flush: bool = True) -> Change | None:
        """The target's latest change, in flight or finished, with its latest verdict
        (``flush=False``: without writing queued records first).

        Blocks on the store; use :meth:`achange` in a coroutine."""
        if flush:
            self.flush()
        row = self._changes.rows.latest(target)
        return None if row is None else self._typed(row)

    def changes(self, target: str | None = None) -> list[Change]:
        """Every change (one target's, or all), oldest first, rejected proposals included.

        Blocks on the store; use :meth:`achanges` in a coroutine."""
        return [self._typed(row) for row in self._changes.rows.all(target)]

    def arms(self, target: str) -> dict[str, Stats] | None:
        """``{"baseline": Stats, "candidate": Stats}`` of the target's change in flight: the
        calls each arm served since the change started (what its verdict is judged on);
        ``None`` without a change in flight. Blocks on the store."""
        self.flush()
        row = self._changes.rows.latest(target)
        if row is None or not row.serving and row.state != State.RESTORE_FAILED:
            return None
        base, cand = self._changes.judging.evidence(row)
        return {"baseline": Stats.from_cell(target, base), "candidate": Stats.from_cell(target, cand)}

    def adapter_for(self, target: str) -> ConfigAdapter | None:
        """The :class:`ConfigAdapter` this guard acts through for ``target``: the one its
        latest proposal gave, else ``Guard(adapter=...)``, else one rebuilt from the spec
        its latest change stored (``JsonFileConfigAdapter``, Hermes skills); ``None`` when
        there is none in this process. Blocks on the store."""
        return self._changes.adapter_for(target)

    def _typed(self, row: Any) -> Change:
        """The change of a row, with the detector's current reading while it is judged."""
        verdict = None
        if row.state in (State.CANARY, State.SWITCHED) or (row.state == State.PAUSED and not row.verdict):
            with fail_open("change.verdict"):
                verdict = self._changes.judging.current_verdict(row)
        return Change.from_row(row, verdict)

    def evaluate(self, target: str) -> Verdict | None:
        """Judge the target's change now, on this thread, and act on the verdict.

        Blocks on the store and the adapter; use :meth:`aevaluate` in a coroutine."""
        self.flush()
        return self._changes.evaluate(target)

    def approve(self, target: str, *, actor: str = "api") -> Change:
        """Start a change that waits for approval.

        Blocks on the store and the adapter; use :meth:`aapprove` in a coroutine."""
        return self._changes.approve(target, actor)

    def promote(self, target: str, *, actor: str = "api") -> bool:
        """Promote the change in flight now.

        Blocks on the store and the adapter; use :meth:`apromote` in a coroutine."""
        return self._changes.promote(target, Verdict(Verdict.HEALTHY, f"promoted by {actor}", "manual"), actor=actor)

    def rollback(self, target: str, *, actor: str = "api", reason: str | None = None, cooldown: bool = True,
                 restore: bool = True) -> bool:
        """Roll the change in flight back now (idempotent: ``False`` if there is none);
        ``reason`` goes to the trail and the change. ``cooldown=False`` lets the same patch
        be proposed again at once (a change superseded by a newer edit, not judged bad).
        ``restore=False`` ends the change without writing the baseline through the adapter,
        for an integration whose target already holds something newer (an edit that
        supersedes the change, proposed right after). A change already promoted is undone
        with :meth:`revert`.

        Blocks on the store and the adapter; use :meth:`arollback` in a coroutine."""
        verdict = Verdict(Verdict.REGRESSED, reason or f"rolled back by {actor}", "manual")
        return self._changes.rollback(target, verdict, actor=actor, cooldown=cooldown, restore=restore)

    def adopt(self, target: str, config: dict, *, actor: str = "api") -> str:
        """Make ``config`` the target's active version without a change (nothing is written
        through the adapter: the target serves it already), so that later changes are judged
        against it: a skill an agent just created, a config deployed outside sil-guard.
        Returns the version id; refused (``InvalidTransition``) while a change is in flight.

        Blocks on the store; use :meth:`aadopt` in a coroutine."""
        return self._changes.adopt(target, config, actor=actor)

    def request(self, target: str, action: str, *, actor: str = "api") -> bool:
        """Ask the workers that hold the target's adapter to ``"promote"`` or ``"rollback"``
        its change in flight (for a process that cannot rebuild the adapter, e.g. the CLI);
        a worker acts within about a second. Blocks on the store."""
        if action not in ("promote", "rollback"):
            raise ConfigError(f"action must be 'promote' or 'rollback', not {action!r}")
        return self._changes.request(target, action, actor)

    def pause(self, target: str, *, actor: str = "api") -> bool:
        """Stop ramping and acting on the change in flight (it keeps being served).

        Blocks on the store; use :meth:`apause` in a coroutine."""
        return self._changes.set_paused(target, True, actor=actor)

    def resume(self, target: str, *, actor: str = "api") -> bool:
        """Resume a paused change. Blocks on the store; use :meth:`aresume` in a coroutine."""
        return self._changes.set_paused(target, False, actor=actor)

    def pin(self, target: str, version: str, *, adapter: ConfigAdapter | None = None, actor: str = "api") -> None:
        """Make ``version`` the active version (restored through the adapter if any) and
        hold it: proposals are refused until :meth:`unpin`.

        Blocks on the store and the adapter; use :meth:`apin` in a coroutine."""
        self._changes.pin(target, version, adapter=adapter, actor=actor)

    def unpin(self, target: str, *, actor: str = "api") -> bool:
        """Let changes of a pinned target be proposed again (``False`` if it was not pinned).

        Blocks on the store; use :meth:`aunpin` in a coroutine."""
        return self._changes.unpin(target, actor=actor)

    def revert(self, target: str, *, to: str | None = None, adapter: ConfigAdapter | None = None,
               actor: str = "api") -> Change:
        """Restore an earlier version through the adapter, as a new change recorded in the
        trail: by default the version the last promoted change replaced (whose patch is
        then refused for its cooldown), else ``to``. Raises :class:`ConfigError` when no
        adapter is available, :class:`InvalidTransition` while a change is in flight.

        Blocks on the store and the adapter; use :meth:`arevert` in a coroutine."""
        return self._changes.revert(target, to, adapter=adapter, actor=actor)

    def route(self, target: str, *, key: Any = None) -> tuple[str | None, str | None, dict | None]:
        """``(version, arm, config)`` that serves a call of ``target`` now: the active
        version (arm ``None``) or, during a canary, the arm ``key`` routes to (the same arm
        for the same key on every worker; a random one without a key). For adapters that
        serve config themselves (LangGraph's ``configurable``, a Hermes skill)."""
        return self._changes.route(target, key)

    def versions(self, target: str) -> list[dict]:
        """Every stored config version of a target, oldest first.

        Blocks on the store; use :meth:`aversions` in a coroutine."""
        return list_versions(self.store, target)

    def trail(self, target: str | None = None) -> list[dict]:
        """The trail's events (one target's, or all), oldest first.

        Blocks on the store; use :meth:`atrail` in a coroutine."""
        return self.store.trail_read(target=target)

    def verify_trail(self) -> TrailReport:
        """Check the trail's hash chain (see :func:`sil_core.verify_trail`).

        Blocks on the store; use :meth:`averify_trail` in a coroutine."""
        return verify_trail(self.store)
