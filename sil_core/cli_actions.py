"""The ``sil`` commands that act on a change: promote, rollback, approve, revert, pin, unpin.

Each runs through a Guard of its own (actor ``cli:$USER``). When the target's adapter cannot
be rebuilt in this process, promote and rollback are *requested* from the workers that hold
it (``Guard.request``); the others refuse and say where to act instead.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
from typing import Any

from .rollout import SERVING, Mode, State
from .store import Store

__all__ = ("DONE", "IN_FLIGHT_STATES", "REFUSED", "USAGE", "Refused", "act", "actor")

#: exit codes: done, refused (nothing to act on, a failed check), usage error
DONE, REFUSED, USAGE = 0, 1, 2
#: states of a change that `sil promote` / `sil rollback` can act on
IN_FLIGHT_STATES = SERVING | {State.RESTORE_FAILED}


class Refused(Exception):
    """An action that cannot be taken; the message says why (exit code 1)."""


def actor() -> str:
    """``cli:<user>``: who acted, for the trail."""
    try:
        user = os.environ.get("USER") or getpass.getuser()
    except Exception:  # no user name in this environment
        user = "unknown"
    return f"cli:{user}"


def _in_flight(guard: Any, target: str) -> Any:
    change = guard.change(target)
    if change is None or change.state not in IN_FLIGHT_STATES:
        hint = ""
        if change is not None and change.state == State.PROMOTED:
            hint = f" (change {change.id} was promoted; undo it with: sil revert {target})"
        raise Refused(f"{target}: no change in flight{hint}")
    return change


def _promote_or_rollback(guard: Any, target: str, action: str, who: str) -> dict:
    change = _in_flight(guard, target)
    needs_adapter = change.mode == Mode.SWITCH if action == "rollback" else change.mode == Mode.CANARY
    if needs_adapter and guard.adapter_for(target) is None:
        guard.request(target, action, actor=who)
        return {"change": change.id, "state": change.state, "requested": True,
                "message": f"{target}: {action} requested: its adapter cannot be rebuilt here, so the next worker "
                           f"that holds it acts (within about a second)"}
    done = guard.rollback(target, actor=who) if action == "rollback" else guard.promote(target, actor=who)
    after = guard.change(target)
    if not done:
        raise Refused(f"{target}: {action} not done; change {change.id} is {after.state}"
                      + (" (another worker is acting on it)" if after.state in IN_FLIGHT_STATES else ""))
    return {"change": change.id, "state": after.state, "message": f"{target}: {action} done; change {change.id} "
                                                                  f"is now {after.state}"}


def _approve(guard: Any, target: str, who: str) -> dict:
    change = guard.change(target)
    if change is None or change.state != State.PROPOSED:
        raise Refused(f"{target}: no change waiting for approval")
    if change.mode == Mode.SWITCH and guard.adapter_for(target) is None:
        raise Refused(f"{target}: a switch-mode change is applied through its adapter, which cannot be rebuilt "
                      "here; approve it where the adapter lives (guard.approve)")
    after = guard.approve(target, actor=who)
    if not after.serving:
        raise Refused(f"{target}: change {after.id} could not start: {after.reason}")
    return {"change": after.id, "state": after.state, "message": f"{target}: change {after.id} approved; it is now "
                                                                 f"{after.state}"}


def _needs_adapter(guard: Any, target: str, what: str) -> None:
    if guard.adapter_for(target) is None:
        raise Refused(f"{target}: {what} restores a config through the target's ConfigAdapter, which cannot be "
                      "rebuilt in this process (only adapters with a spec, such as JsonFileConfigAdapter, can); "
                      f"call guard.{what}(...) where the adapter lives")


def _revert(guard: Any, target: str, to: str | None, who: str) -> dict:
    _needs_adapter(guard, target, "revert")
    change = guard.revert(target, to=to, actor=who)
    if change.state != State.PROMOTED:
        raise Refused(f"{target}: {change.reason}")
    return {"change": change.id, "state": change.state,
            "message": f"{target}: reverted {change.baseline_version or '-'} -> {change.candidate_version} "
                       f"(change {change.id})"}


def _pin(guard: Any, target: str, version: str, who: str) -> dict:
    if version != guard.view(target, fresh=True).active:
        _needs_adapter(guard, target, "pin")
    guard.pin(target, version, adapter=guard.adapter_for(target), actor=who)
    return {"version": version, "message": f"{target}: pinned to {version}; proposals are refused until "
                                           f"sil unpin {target}"}


def _unpin(guard: Any, target: str, who: str) -> dict:
    if not guard.unpin(target, actor=who):
        raise Refused(f"{target}: not pinned")
    return {"message": f"{target}: unpinned"}


def act(store: Store, args: argparse.Namespace) -> int:
    """Run one acting command; its exit code."""
    from .guard import Guard

    who = actor()
    guard = Guard(store, worker_id=who, flush_interval=60)
    try:
        command, target = args.command, args.target
        if command in ("promote", "rollback"):
            result = _promote_or_rollback(guard, target, command, who)
        elif command == "approve":
            result = _approve(guard, target, who)
        elif command == "revert":
            result = _revert(guard, target, args.to, who)
        elif command == "pin":
            result = _pin(guard, target, args.version, who)
        else:
            result = _unpin(guard, target, who)
    finally:
        guard.close()
    if args.json:
        print(json.dumps({"ok": True, "command": command, "target": target, "actor": who, **result}, indent=2))
    else:
        print(result["message"])
    return DONE
