"""Guarded config changes: propose, route calls to arms, judge, promote or roll back.

``ChangeManager`` is the Guard's engine for changes. Its state lives in the store (change
rows, target heads, versions, the trail), so every worker sharing a store sees the same
change; each move is a compare-and-set on the change row, and acting on a verdict (a
promotion or a rollback, which call the user's adapter) first takes a short lease on the
row, so exactly one worker acts. Judging reads aggregate cells pooled across workers.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import random
import socket
import threading
import time
import zlib
from typing import TYPE_CHECKING, Any, Callable

from ._internal.failopen import fail_open, logger as _log, report
from ._internal.ids import new_id
from ._internal.worker import BackgroundWorker
from .adapters import ConfigAdapter, adapter_from_spec, merge_patch
from .aggregates import BUCKET_S, Cell, merge
from .detect import TripwireState, Verdict, is_outage, judge
from .detect.detector import p95_look
from .errors import ConfigError
from .policy import RolloutPolicy
from .records import CallRecord, Outcome
from .rollout import IN_FLIGHT, Change, InvalidTransition, State, check_transition
from .trail import append_event
from .versions import get_version, put_version
from .watch import post_promotion, settled

if TYPE_CHECKING:
    from .guard import Guard

__all__ = ("ChangeManager",)

_mono = time.monotonic
LEASE_S = 60.0
_LOG_LEVELS = {"rollback_succeeded": logging.WARNING, "restore_failed": logging.ERROR, "reverted": logging.WARNING}
#: how often a promoted version's watch judges it at most (per worker)
WATCH_EVERY_S = 5.0
#: how long a call of a target this worker has never seen waits for its first read
FIRST_READ_S = 0.02
MAX_RESTORE_ATTEMPTS = 10
CANDIDATE, BASELINE = "candidate", "baseline"


def bucket(change_id: str, key: Any) -> float:
    """Where a routing key falls in [0, 1) for one change: below the change's weight, the
    candidate serves it. The same on every worker, so any worker can tell which arm a key
    got (or, after a rollback, would have got at the final weight)."""
    return zlib.crc32(f"{change_id}:{key}".encode()) / 4294967296.0


def patch_hash(patch: dict) -> str:
    return hashlib.sha256(json.dumps(patch, sort_keys=True, separators=(",", ":"), default=repr).encode()).hexdigest()[:16]


def default_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class _View:
    """What the hot path needs about a target, cached for ``refresh_s``."""

    __slots__ = ("expires", "unversioned", "active", "active_config", "change_id", "state", "mode", "weight",
                 "baseline", "baseline_config", "candidate", "candidate_config", "started", "policy", "target")

    def __init__(self, target: str, expires: float) -> None:
        self.target = target
        self.expires = expires
        self.active = self.active_config = self.change_id = self.state = self.mode = None
        self.baseline = self.baseline_config = self.candidate = self.candidate_config = None
        self.started = 0.0
        self.policy: RolloutPolicy | None = None
        self.weight = 0.0
        self.unversioned = True


class ChangeManager:
    """Changes of every target of one Guard (see module docstring)."""

    def __init__(self, guard: "Guard", *, refresh_s: float = 0.5) -> None:
        self.guard = guard
        self.store = guard.store
        self.refresh_s = refresh_s
        self.adapters: dict[str, ConfigAdapter] = {}
        self._views: dict[str, _View] = {}
        self._wires: dict[str, TripwireState] = {}  # change id -> the tripwire row as last seen
        self._p95_looks: dict[str, int] = {}
        self._watch: set[str] = set()  # targets with a change in flight, known to this worker
        self._watching: set[str] = set()  # targets whose promoted version is still watched
        self._watch_looks: dict[str, float] = {}  # change id -> when its watch judges next
        self._scan: tuple[float, bool] = (0.0, False)  # (valid until, found) of any_in_flight
        self._refreshing: dict[str, threading.Event] = {}  # targets being re-read in the background
        self._refresher = BackgroundWorker("sil-refresh", self._background_refresh)
        self._lock = threading.RLock()

    @property
    def worker_id(self) -> str:
        return self.guard.worker_id

    # -- the hot path ---------------------------------------------------------------------
    def view(self, target: str) -> _View:
        """The target's view for a call: never waits on the store (see :meth:`_served`),
        except with ``refresh_s == 0``, which asks for a fresh read on every call."""
        v = self._views.get(target)
        if v is not None and _mono() <= v.expires:
            return v
        if self.refresh_s <= 0:
            return self._refresh(target)
        return self._served(target, v)

    def view_now(self, target: str) -> _View:
        """The target's view, read from the store now if it expired (off the hot path)."""
        v = self._views.get(target)
        if v is None or _mono() > v.expires:
            v = self._refresh(target)
        return v

    def _served(self, target: str, stale: _View | None) -> _View:
        """An expired view keeps serving while a background thread re-reads it. A target
        never seen here waits at most ``FIRST_READ_S`` for its first read; if the store is
        slower than that, the call is served as a target without a change (its record carries
        no version or arm: unattributed, never misattributed) until the read lands."""
        with self._lock:
            pending = self._refreshing.get(target)
            if pending is None:
                pending = self._refreshing[target] = threading.Event()
                self._refresher.submit(target)
        if stale is not None:
            return stale
        pending.wait(FIRST_READ_S)
        return self._views.get(target) or _View(target, 0.0)

    def _background_refresh(self, target: str) -> None:
        try:
            self._refresh(target)
        finally:
            with self._lock:
                done = self._refreshing.pop(target, None)
            if done is not None:
                done.set()

    def close(self) -> None:
        self._refresher.close(0.0)

    def route(self, target: str, key: Any = None) -> tuple[str | None, str | None, dict | None]:
        """``(version, arm, config)`` serving one call of ``target``."""
        v = self.view(target)
        if v.state is None or v.state not in (State.CANARY, State.PAUSED):
            return v.active, None, None if v.active_config is None else dict(v.active_config)
        if v.mode == "switch":
            return v.candidate, CANDIDATE, dict(v.candidate_config)
        if (random.random() if key is None else bucket(v.change_id, key)) < v.weight:
            return v.candidate, CANDIDATE, dict(v.candidate_config)
        return v.baseline, BASELINE, dict(v.baseline_config)

    def _refresh(self, target: str) -> _View:
        view = _View(target, _mono() + self.refresh_s)
        try:
            head = self._head(target)
            if head.get("active"):
                view.active = head["active"]
                view.active_config = get_version(self.store, target, view.active)
            row = self._change_row(head.get("change_id"))
            if row is not None:
                view.change_id, view.state, view.mode = row["id"], row["state"], row["mode"]
                view.weight = row.get("weight", 0.0)
                view.started = row.get("started", row["created"])
                view.policy = RolloutPolicy.from_dict(row["policy"])
                view.baseline, view.candidate = row["baseline_version"], row["candidate_version"]
                view.baseline_config = get_version(self.store, target, view.baseline)
                view.candidate_config = get_version(self.store, target, view.candidate)
                with self._lock:
                    if row["state"] in IN_FLIGHT:
                        self._watch.add(target)
                    else:
                        self._watch.discard(target)
                    if row["state"] == State.PROMOTED and time.time() < row.get("watch_until", 0) \
                            and not row.get("watch_alerted") and row.get("kind") != "revert":
                        self._watching.add(target)
                    else:
                        self._watching.discard(target)
                if row["state"] not in IN_FLIGHT:
                    self._forget(row["id"])
        except Exception as exc:  # a broken store: keep serving what we knew (fail open)
            report("change.refresh", exc)
            old = self._views.get(target)
            if old is not None:
                old.expires = _mono() + self.refresh_s
                return old
        view.unversioned = view.active is None and view.state is None
        self._views[target] = view
        return view

    def invalidate(self, target: str) -> None:
        self._views.pop(target, None)

    # -- rows -----------------------------------------------------------------------------
    def _head(self, target: str) -> dict:
        row = self.store.kv_get("head", target)
        return row[0] if row else {}

    def _change_row(self, change_id: str | None) -> dict | None:
        if not change_id:
            return None
        row = self.store.kv_get("change", change_id)
        return row[0] if row else None

    def _update_head(self, target: str, fn: Callable[[dict], None]) -> None:
        for _ in range(50):
            got = self.store.kv_get("head", target)
            head, rev = (got if got else ({}, 0))
            fn(head)
            if self.store.kv_put("head", target, head, expect_rev=rev) is not None:
                self.invalidate(target)
                return
        raise RuntimeError(f"could not update the head of {target!r}: too much contention")

    def latest_row(self, target: str) -> dict | None:
        return self._change_row(self._head(target).get("change_id"))

    def _trail(self, type: str, target: str, change_id: str | None, actor: str | None = None, **data: Any) -> dict | None:
        with fail_open("trail.append"):
            return append_event(self.store, type, target, change_id=change_id, actor=actor or self.worker_id, **data)
        return None

    def _notify(self, type: str, target: str, message: str, **data: Any) -> None:
        """Tell the notifiers, and the ``sil_core`` logger (WARNING for what undoes or fails,
        INFO for the rest), so a decision is seen even without a notifier."""
        if type != "watch_regressed":  # logged where it is decided, with its reason
            _log.log(_LOG_LEVELS.get(type, logging.INFO), "sil-guard: %s", message)
        self.guard.emit({"type": type, "target": target, "ts": time.time(), "message": message, **data})

    # -- propose --------------------------------------------------------------------------
    def propose(self, target: str, patch: dict, *, adapter: ConfigAdapter | None, mode: str,
                policy: RolloutPolicy | None, actor: str | None = None, approve: bool = True,
                metadata: dict | None = None) -> Change:
        if mode not in ("canary", "switch"):
            raise ConfigError(f"mode must be 'canary' or 'switch', not {mode!r}")
        if not isinstance(patch, dict) or not patch:
            raise ConfigError("a patch must be a non-empty dict")
        adapter = adapter or self.adapters.get(target) or self.guard.adapter
        if adapter is None:
            raise ConfigError(f"propose({target!r}) needs an adapter= (or Guard(adapter=...))")
        policy = policy or self.guard.policy
        actor = actor or self.worker_id
        now = time.time()
        head = self._head(target)
        row: dict[str, Any] = {
            "id": new_id(), "target": target, "state": State.PROPOSED, "mode": mode, "patch": copy.deepcopy(patch),
            "patch_hash": patch_hash(patch), "policy": policy.as_dict(), "created": now, "updated": now,
            "actor": actor, "weight": 0.0, "step": 0, "step_started_n": 0, "reason": "",
            "baseline_version": head.get("active") or "", "candidate_version": "", "metadata": metadata or {},
            # no version served the target yet: its baseline calls were recorded unversioned
            "baseline_unversioned": not head.get("active"),
        }
        in_flight = self._change_row(head.get("change_id"))
        if in_flight is not None and in_flight["state"] in IN_FLIGHT:
            return self._reject(row, f"change {in_flight['id']} is still {in_flight['state']}; "
                                     "one change in flight per target")
        pin = head.get("pin")
        if head.get("pinned") and pin:
            return self._reject(row, f"{target!r} is pinned to {head.get('active')} by {pin.get('actor')}; "
                                     "unpin it first")
        until = (head.get("blocked") or {}).get(row["patch_hash"])
        if in_flight is not None and in_flight["state"] == State.ROLLED_BACK and \
                in_flight.get("patch_hash") == row["patch_hash"]:
            # the head's block may not be written yet: a rollback commits its row first
            cooldown = RolloutPolicy.from_dict(in_flight["policy"]).cooldown_hours * 3600
            until = max(until or 0.0, in_flight["updated"] + cooldown)
        if until is not None and until > now:
            when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(until))
            return self._reject(row, f"this patch was rolled back; refused until {when} (cooldown)")
        try:
            baseline_config = adapter.get_config(agent_id=target)
            if not isinstance(baseline_config, dict):
                raise TypeError(f"get_config returned {type(baseline_config).__name__}, not dict")
        except Exception as exc:
            self._trail("adapter_error", target, row["id"], actor, stage="get_config", error=repr(exc))
            return self._reject(row, f"adapter.get_config failed: {exc!r}")
        spec = getattr(adapter, "spec", None)
        if callable(spec):  # after get_config: the spec carries the baseline's exact bytes
            with fail_open("adapter.spec"):
                row["adapter_spec"] = spec()
        candidate_config = merge_patch(baseline_config, patch)
        row["baseline_version"] = put_version(self.store, target, baseline_config)
        row["candidate_version"] = put_version(self.store, target, candidate_config)
        row["backup"] = copy.deepcopy(baseline_config)
        if row["candidate_version"] == row["baseline_version"]:
            return self._reject(row, "the patch changes nothing")

        if self.store.kv_put("change", row["id"], row, expect_rev=0) is None:
            raise RuntimeError("change id collision")
        won = []

        def claim(h: dict) -> None:
            current = self._change_row(h.get("change_id"))
            won[:] = [current is None or current["state"] not in IN_FLIGHT]
            if won[0]:
                h["change_id"] = row["id"]
                h.setdefault("active", row["baseline_version"])

        self._update_head(target, claim)
        if not won[0]:
            return self._reject(row, "another change of this target was proposed at the same moment", rev=1)
        self.adapters[target] = adapter  # only now: a rejected proposal keeps the change in flight's adapter
        self._trail("change_proposed", target, row["id"], actor, mode=mode, patch=patch,
                    baseline_version=row["baseline_version"], candidate_version=row["candidate_version"],
                    policy=row["policy"], metadata=row["metadata"])
        if not approve:
            self.invalidate(target)
            return Change.from_row(row)
        return self._start(target, row["id"], actor)

    def _reject(self, row: dict, reason: str, *, rev: int | None = None) -> Change:
        row.update(state=State.REJECTED, reason=reason, updated=time.time())
        with fail_open("change.reject"):  # kept, so that `sil changes` lists why it was refused
            self.store.kv_put("change", row["id"], row, expect_rev=rev if rev is not None else 0)
        self._trail("change_rejected", row["target"], row["id"], row.get("actor"), reason=reason, patch=row["patch"])
        return Change.from_row(row)

    def approve(self, target: str, actor: str) -> Change:
        """Start a change that waits for approval (state ``proposed``)."""
        row = self.latest_row(target)
        if row is None or row["state"] != State.PROPOSED:
            raise InvalidTransition(f"{target!r} has no change waiting for approval")
        return self._start(target, row["id"], actor)

    def _start(self, target: str, change_id: str, actor: str) -> Change:
        got = self.store.kv_get("change", change_id)
        row, rev = got
        policy = RolloutPolicy.from_dict(row["policy"])
        adapter = self._adapter_for(target, row)
        cells = self.store.cells(target)
        if row["mode"] == "switch":
            try:
                applied = adapter.apply_config(agent_id=target, config_patch=row["patch"])
            except Exception as exc:
                applied = exc
            if applied is not True:  # None is not success (seed bug B8)
                why = f"adapter.apply_config returned {applied!r}" if not isinstance(applied, Exception) \
                    else f"adapter.apply_config raised {applied!r}"
                self._trail("adapter_error", target, change_id, actor, stage="apply_config", error=why)
                return self._reject(row, why, rev=rev)
            row["frozen_baseline"] = self._frozen_baseline(target, row["baseline_version"], policy,
                                                           unversioned=row.get("baseline_unversioned", False))
            row["weight"] = 1.0
        else:
            row["weight"] = policy.ramp[0]
            row["snapshot_baseline"] = _cell_dump(cells.get((row["baseline_version"], BASELINE)))
        row["snapshot_candidate"] = _cell_dump(cells.get((row["candidate_version"], CANDIDATE)))
        row.update(state=State.CANARY, updated=time.time(), started=time.time())
        if self.store.kv_put("change", change_id, row, expect_rev=rev) is None:
            return Change.from_row(self.store.kv_get("change", change_id)[0])
        if row["mode"] == "switch":
            self._update_head(target, lambda h: h.update(active=row["candidate_version"]))
        self.invalidate(target)
        with self._lock:
            self._watch.add(target)
        self._trail("change_applied", target, change_id, actor, mode=row["mode"], weight=row["weight"],
                    candidate_version=row["candidate_version"])
        self._notify("change_applied", target, f"{target}: {row['mode']} of {row['candidate_version']} "
                     f"(from {row['baseline_version']}) started at weight {row['weight']:.0%}", change_id=change_id)
        return Change.from_row(row)

    def _frozen_baseline(self, target: str, version: str, policy: RolloutPolicy, *, unversioned: bool = False) -> list:
        # calls recorded before the target had any version carry version "" (aggregates key)
        versions = (version, "") if unversioned else (version,)

        def window(since_hour: int | None) -> Cell:
            return merge([c for v in versions for c in self.store.cells(target, version=v, since_hour=since_hour).values()])

        since = int((time.time() - policy.baseline_window_hours * 3600) // BUCKET_S)
        frozen = window(since)
        if frozen.successes + frozen.failures < policy.min_calls:
            frozen = window(None)
        return _cell_dump(frozen)

    def _adapter_for(self, target: str, row: dict | None) -> ConfigAdapter | None:
        return self.adapters.get(target) or self.guard.adapter or adapter_from_spec((row or {}).get("adapter_spec"), store=self.store)

    def adapter_for(self, target: str) -> ConfigAdapter | None:
        """The adapter this worker would act through (see ``Guard.adapter_for``)."""
        found = self.adapters.get(target) or self.guard.adapter
        if found is not None:
            return found
        for row in reversed(self.rows(target)):
            if row.get("adapter_spec"):
                return adapter_from_spec(row["adapter_spec"], store=self.store)
        return None

    # -- evidence and judging -------------------------------------------------------------
    def evidence(self, row: dict) -> tuple[Cell, Cell]:
        """``(baseline, candidate)`` cells of a change: its own calls only."""
        cells = self.store.cells(row["target"])
        cand = (cells.get((row["candidate_version"], CANDIDATE)) or Cell()).copy()
        cand.add(_cell_load(row.get("snapshot_candidate")), -1)
        if row["mode"] == "switch":
            base = _cell_load(row.get("frozen_baseline"))
        else:
            base = (cells.get((row["baseline_version"], BASELINE)) or Cell()).copy()
            base.add(_cell_load(row.get("snapshot_baseline")), -1)
        return base, cand

    def current_verdict(self, row: dict) -> Verdict:
        base, cand = self.evidence(row)
        return judge(base, cand, RolloutPolicy.from_dict(row["policy"]))

    def observe(self, calls: list[CallRecord], judged: list[CallRecord] = ()) -> set[str]:
        """Feed written records, and earlier canary calls that feedback judged since, to the
        tripwires; returns targets worth judging now.

        The tripwire (:class:`~sil_core.detect.TripwireState`, a row in the store shared by
        every worker) watches a change's first ``min_calls`` candidate calls, before the
        statistical test has its minimum sample, and fires on ``tripwire_consecutive``
        failures in a row unless the baseline fails as well since the run began (an outage,
        not the change; ``benchmarks/detection.py`` measures both rules).
        """
        with self._lock:
            watch, watching = set(self._watch), set(self._watching)
        due: set[str] = set()
        fresh: dict[str, tuple[_View, list[CallRecord], list[CallRecord]]] = {}
        for r in calls:
            if r.target in watching and r.success is not None:
                due.add(r.target)  # a promoted version under watch
            if r.target not in watch or r.arm is None or r.success is None:
                continue
            due.add(r.target)
            v = self._views.get(r.target)
            if r.arm == CANDIDATE and v is not None and _serves(v, r):
                fresh.setdefault(v.change_id, (v, [], []))[1].append(r)
        for r in judged:
            if r.success is None:
                continue
            v = self.view_now(r.target)  # a worker that only took feedback may not know the change yet
            if v.change_id is not None and v.state == State.PROMOTED and r.target in self._watching:
                due.add(r.target)  # late feedback on the canary of a promoted version under watch
                continue
            if v.change_id is None or v.state not in (State.CANARY, State.PAUSED):
                continue
            due.add(r.target)
            if r.arm == CANDIDATE and _serves(v, r):
                fresh.setdefault(v.change_id, (v, [], []))[2].append(r)
        for view, records, verdicts in fresh.values():
            with fail_open("tripwire"):
                self._trip(view, records, verdicts)
        return due

    def _trip(self, view: _View, records: list[CallRecord], judged: list[CallRecord]) -> None:
        """Add candidate calls to the change's tripwire row (compare-and-set), and fire it."""
        cid = view.change_id
        seen = self._wires.get(cid)
        if seen is not None and (seen.fired or (not judged and seen.full()
                                                and all(r.ts >= seen.calls[-1][0] for r in records))):
            return  # fired already, or every new call is past the window: nothing to write
        policy = view.policy or RolloutPolicy()
        for _ in range(20):
            got = self.store.kv_get("tripwire", cid)
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
            run = state.failure_run()
            if run is not None:
                first, last = run
                since = state.calls[first - 1][0] if first > 0 else view.started
                base_calls, base_failures = self._baseline_since(view, since)
                if not is_outage(base_calls, base_failures):
                    run_calls = state.calls[first:last + 1]
                    state.fired = {"ts": time.time(), "by": self.worker_id, "calls": [e[1] for e in run_calls],
                                   "judged_failed": sum(1 for e in run_calls if e[3]),
                                   "baseline_since_run": {"calls": base_calls, "failures": base_failures}}
            if self.store.kv_put("tripwire", cid, state.as_dict(), expect_rev=rev) is not None:
                break
        else:
            return
        self._wires[cid] = state

    def _baseline_since(self, view: _View, since: float) -> tuple[int, int]:
        """``(decided calls, failures)`` of the baseline arm since ``since`` (all workers)."""
        if view.mode == "switch":
            return 0, 0  # the baseline is a frozen window: it serves nothing now
        rows = self.store.read_calls(view.target, since=since, version=view.baseline, limit=5000)
        decided = [r.success for r in rows if r.arm == BASELINE and r.success is not None]
        return len(decided), decided.count(False)

    def any_in_flight(self) -> bool:
        """Whether any target of the store has a change in flight (this worker's own view,
        else a scan of the target heads, at most every few seconds): feedback on a call
        served elsewhere is looked up in the store only then."""
        with self._lock:
            if self._watch:
                return True
        now = _mono()
        if now < self._scan[0]:
            return self._scan[1]
        found = False
        for _, head, _ in self.store.kv_list("head"):
            row = self._change_row(head.get("change_id"))
            if row is not None and row["state"] in IN_FLIGHT:
                found = True
                break
        self._scan = (now + max(self.refresh_s, 5.0), found)
        return found

    def _tripwire_fired(self, change_id: str) -> dict | None:
        """The evidence of the change's tripwire if it fired (in any worker)."""
        seen = self._wires.get(change_id)
        if seen is not None and seen.fired:
            return seen.fired
        got = self.store.kv_get("tripwire", change_id)
        return got[0].get("fired") if got else None

    def _forget(self, change_id: str) -> None:
        """Drop what this worker kept about a change that ended."""
        self._p95_looks.pop(change_id, None)
        self._wires.pop(change_id, None)

    def evaluate(self, target: str) -> Verdict | None:
        """Judge the target's change in flight and act on the verdict (one worker acts)."""
        row = self.latest_row(target)
        if row is None:
            return None
        if row["state"] == State.RESTORE_FAILED:
            if time.time() >= row.get("restore", {}).get("next_at", 0) and \
                    row.get("restore", {}).get("attempts", 0) < MAX_RESTORE_ATTEMPTS:
                self.rollback(target, None, actor=self.worker_id)
            return None
        if row.get("requested") and row["state"] in (State.CANARY, State.PAUSED):
            request = row["requested"]
            verdict = Verdict(Verdict.REGRESSED if request["action"] == "rollback" else Verdict.HEALTHY,
                              f"requested by {request['actor']}", "manual")
            if request["action"] == "rollback":
                self.rollback(target, verdict, actor=request["actor"])
            else:
                self.promote(target, verdict, actor=request["actor"])
            return verdict
        if row["state"] == State.PROMOTED:
            return self._watch_promoted(row)
        if row["state"] != State.CANARY:
            return None
        policy = RolloutPolicy.from_dict(row["policy"])
        base, cand = self.evidence(row)
        cid = row["id"]
        look = p95_look(cand.lat_n)
        check_p95 = look > self._p95_looks.get(cid, -1)
        if check_p95:
            self._p95_looks[cid] = look
        verdict = judge(base, cand, policy, check_p95=check_p95)
        n_b = cand.successes + cand.failures
        fired = self._tripwire_fired(cid) if verdict.kind != Verdict.REGRESSED else None
        if fired:
            later = fired.get("judged_failed") or 0
            verdict = Verdict(Verdict.REGRESSED, f"{policy.tripwire_consecutive} consecutive candidate failures "
                              f"(tripwire, before the minimum sample"
                              + (f"; {later} judged failed after they returned" if later else "") + ")",
                              "tripwire", {**verdict.evidence, "tripwire": fired})
        last_step = row["mode"] == "switch" or row.get("step", 0) >= len(policy.ramp) - 1
        decided = None
        if verdict.kind == Verdict.REGRESSED:
            decided = "rollback"
        elif verdict.kind == Verdict.HEALTHY and last_step:
            decided = "promote"
        elif n_b >= policy.horizon:
            decided = {"keep": "promote", "hold": "pause", "rollback": "rollback"}[policy.on_inconclusive]
            verdict = Verdict(verdict.kind, f"horizon of {policy.horizon} candidate calls reached without a "
                              f"decision: on_inconclusive={policy.on_inconclusive!r}", "horizon", verdict.evidence)
        if decided == "promote" and policy.feedback_window_s > 0:
            decided, verdict = self._settled_decision(row, policy, base, cand, verdict)
        if decided and policy.observe_only:
            if row.get("observed") != decided:
                got = self.store.kv_get("change", cid)
                if got and got[0].get("observed") != decided:
                    got[0]["observed"] = decided
                    if self.store.kv_put("change", cid, got[0], expect_rev=got[1]) is not None:
                        self._trail("verdict", target, cid, verdict=verdict.as_dict(), observe_only=True,
                                    would=decided)
            return verdict
        if decided == "rollback":
            self.rollback(target, verdict, actor=self.worker_id)
        elif decided == "promote":
            self.promote(target, verdict, actor=self.worker_id)
        elif decided == "pause":
            self.set_paused(target, True, actor=self.worker_id, verdict=verdict)
        elif not last_step and not policy.observe_only and (
                verdict.kind == Verdict.HEALTHY or n_b - row.get("step_started_n", 0) >= policy.step_calls):
            self._advance(row, n_b)
        return verdict

    def _settled_decision(self, row: dict, policy: RolloutPolicy, base: Cell, cand: Cell,
                          verdict: Verdict) -> tuple[str | None, Verdict]:
        """A promotion judged again on calls older than the feedback window (see watch.py)."""
        kept = settled(self.store, row, base, cand, policy.feedback_window_s)
        if kept is None:
            return None, Verdict(Verdict.INCONCLUSIVE, f"healthy, but more calls than can be read back arrived in "
                                 f"the last {policy.feedback_window_s:g} s: waiting for feedback", verdict.metric,
                                 verdict.evidence)
        again = judge(*kept, policy)
        window = {**again.evidence, "feedback_window_s": policy.feedback_window_s}
        if again.kind == Verdict.REGRESSED:
            return "rollback", Verdict(again.kind, again.reason, again.metric, window)
        settled_n = kept[1].successes + kept[1].failures
        if again.kind == Verdict.HEALTHY or (verdict.metric == "horizon" and settled_n >= policy.horizon):
            reason = f"{again.reason} (calls older than the {policy.feedback_window_s:g} s feedback window)"
            return "promote", Verdict(verdict.kind, reason if verdict.metric != "horizon" else verdict.reason,
                                      verdict.metric, window)
        return None, Verdict(Verdict.INCONCLUSIVE, f"healthy on every call, not yet on calls older than the "
                             f"{policy.feedback_window_s:g} s feedback window: waiting for feedback", again.metric,
                             window)

    def _watch_promoted(self, row: dict) -> Verdict | None:
        """Judge a promoted version against its change's baseline while its watch lasts;
        alert once on a regression (and revert, if the policy says so)."""
        policy = RolloutPolicy.from_dict(row["policy"])
        if time.time() > row.get("watch_until", 0) or row.get("watch_alerted") or row.get("kind") == "revert":
            with self._lock:
                self._watching.discard(row["target"])
            self._watch_looks.pop(row["id"], None)
            return None
        cid = row["id"]
        if _mono() < self._watch_looks.get(cid, 0.0):
            return None
        self._watch_looks[cid] = _mono() + WATCH_EVERY_S
        base, cand = self.evidence(row)
        if base.successes + base.failures < policy.min_calls and row.get("watch_baseline"):
            base = _cell_load(row["watch_baseline"])  # a canary promoted early: the baseline's own history
        cand.add(post_promotion(self.store.cells(row["target"]), row))
        verdict = judge(base, cand, policy)
        if verdict.kind != Verdict.REGRESSED:
            return verdict
        got = self.store.kv_get("change", cid)
        if got is None or got[0].get("watch_alerted"):
            return verdict
        got[0]["watch_alerted"] = time.time()
        if self.store.kv_put("change", cid, got[0], expect_rev=got[1]) is None:
            return verdict  # another worker alerts
        target = row["target"]
        reason = f"after its promotion, {verdict.reason}"
        self._trail("watch_regressed", target, cid, verdict=verdict.as_dict(), version=row["candidate_version"],
                    action=policy.on_watch_regression)
        self._notify("watch_regressed", target, f"{target}: promoted {row['candidate_version']} regressed: {reason}",
                     change_id=cid, level="warning")
        _log.warning("sil-guard: %s: the promoted version %s regressed: %s", target, row["candidate_version"], reason)
        if policy.on_watch_regression == "revert":
            with fail_open("watch.revert"):
                self.revert(target, row["baseline_version"], adapter=None, actor=self.worker_id)
        with self._lock:
            self._watching.discard(target)
        return Verdict(verdict.kind, reason, verdict.metric, verdict.evidence)

    def _advance(self, row: dict, n_b: int) -> None:
        got = self.store.kv_get("change", row["id"])
        if got is None:
            return
        current, rev = got
        if current["state"] != State.CANARY or current.get("step", 0) != row.get("step", 0):
            return
        policy = RolloutPolicy.from_dict(current["policy"])
        step = current.get("step", 0) + 1
        current.update(step=step, weight=policy.ramp[step], step_started_n=n_b, updated=time.time())
        if self.store.kv_put("change", row["id"], current, expect_rev=rev) is not None:
            self.invalidate(row["target"])
            self._trail("arm_weight_changed", row["target"], row["id"], weight=policy.ramp[step],
                        step=step, candidate_calls=n_b)

    # -- acting (lease, then adapter, then commit) ----------------------------------------
    def _acquire(self, target: str, allowed: set[str]) -> tuple[dict, int] | None:
        head = self._head(target)
        got = self.store.kv_get("change", head.get("change_id") or "")
        if got is None:
            return None
        row, rev = got
        if row["state"] not in allowed:
            return None
        lease = row.get("lease")
        now = time.time()
        if lease and lease["until"] > now:
            return None  # someone (another worker, or another thread of this one) is acting
        row["lease"] = {"owner": self.worker_id, "until": now + LEASE_S}
        new_rev = self.store.kv_put("change", row["id"], row, expect_rev=rev)
        return (row, new_rev) if new_rev is not None else None

    def _commit(self, row: dict, rev: int, **fields: Any) -> bool:
        check_transition(row["state"], fields.get("state", row["state"]))
        row.update(fields, updated=time.time())
        row.pop("lease", None)
        row.pop("requested", None)
        ok = self.store.kv_put("change", row["id"], row, expect_rev=rev) is not None
        self.invalidate(row["target"])
        return ok

    def rollback(self, target: str, verdict: Verdict | None, *, actor: str) -> bool:
        """Restore the baseline (switch mode: through the adapter) and end the change."""
        acquired = self._acquire(target, {State.CANARY, State.PAUSED, State.RESTORE_FAILED})
        if acquired is None:
            return False
        row, rev = acquired
        adapter = self._adapter_for(target, row) if row["mode"] == "switch" else None
        if row["mode"] == "switch" and adapter is None:
            self._commit(row, rev)  # release: a worker holding the adapter will act
            return False
        first = row["state"] != State.RESTORE_FAILED
        verdict_dict = verdict.as_dict() if verdict else row.get("verdict")
        if first:
            self._trail("rollback_started", target, row["id"], actor, verdict=verdict_dict)
        error = None
        if adapter is not None:
            remember = getattr(adapter, "remember", None)
            if callable(remember) and row.get("adapter_spec"):
                with fail_open("adapter.remember"):
                    remember(row["adapter_spec"])
            try:
                adapter.rollback_config(agent_id=target, backup_config=copy.deepcopy(row["backup"]))
                restored = adapter.get_config(agent_id=target)
                if restored != row["backup"]:
                    error = "after rollback_config the adapter still reports a different config"
            except Exception as exc:
                error = repr(exc)
        if error is None:
            policy = RolloutPolicy.from_dict(row["policy"])
            if not self._commit(row, rev, state=State.ROLLED_BACK, verdict=verdict_dict,
                                reason=(verdict.reason if verdict else row.get("reason", ""))):
                return False

            def unblock(h: dict) -> None:
                h["active"] = row["baseline_version"]
                h.setdefault("blocked", {})[row["patch_hash"]] = time.time() + policy.cooldown_hours * 3600

            self._update_head(target, unblock)
            with self._lock:
                self._watch.discard(target)
            self._forget(row["id"])
            self._trail("rollback_succeeded", target, row["id"], actor, restored_version=row["baseline_version"],
                        mode=row["mode"], restore_attempts=row.get("restore", {}).get("attempts", 0))
            self._notify("rollback_succeeded", target,
                         f"{target}: rolled back {row['candidate_version']} to {row['baseline_version']}"
                         + (f" ({verdict.reason})" if verdict else ""), change_id=row["id"])
            self._tell_strategy(row, verdict)
            return True
        restore = row.get("restore", {})
        attempts = restore.get("attempts", 0) + 1
        self._commit(row, rev, state=State.RESTORE_FAILED, verdict=verdict_dict,
                     restore={"attempts": attempts, "next_at": time.time() + min(300.0, 2.0 ** attempts),
                              "error": error})
        if first:  # recorded and alerted once, never reported as a success (seed bug B4)
            self._trail("restore_failed", target, row["id"], actor, error=error)
            self._notify("restore_failed", target, f"{target}: ROLLBACK FAILED, the baseline config was NOT "
                         f"restored: {error}; retrying with backoff", change_id=row["id"])
        return False

    def promote(self, target: str, verdict: Verdict | None, *, actor: str) -> bool:
        """Make the candidate the active version (canary mode: through the adapter)."""
        acquired = self._acquire(target, {State.CANARY, State.PAUSED})
        if acquired is None:
            return False
        row, rev = acquired
        if row["mode"] == "canary":
            adapter = self._adapter_for(target, row)
            if adapter is None:
                self._commit(row, rev)
                return False
            try:
                applied = adapter.apply_config(agent_id=target, config_patch=copy.deepcopy(row["patch"]))
            except Exception as exc:
                applied = exc
            if applied is not True:
                self._trail("adapter_error", target, row["id"], actor, stage="apply_config (promotion)",
                            error=repr(applied))
                self._commit(row, rev, state=State.PAUSED, reason=f"promotion failed: apply_config gave {applied!r}")
                return False
        verdict_dict = verdict.as_dict() if verdict else None
        policy = RolloutPolicy.from_dict(row["policy"])
        promoted = (self.store.cells(target).get((row["candidate_version"], "")) or Cell())
        watch = {}
        if policy.watch_hours > 0:
            watch = {"snapshot_promoted": _cell_dump(promoted), "watch_until": time.time() + policy.watch_hours * 3600,
                     "watch_baseline": row.get("frozen_baseline") or self._frozen_baseline(
                         target, row["baseline_version"], policy, unversioned=row.get("baseline_unversioned", False))}
        if not self._commit(row, rev, state=State.PROMOTED, verdict=verdict_dict, weight=1.0,
                            reason=verdict.reason if verdict else "promoted", **watch):
            return False
        self._update_head(target, lambda h: h.update(active=row["candidate_version"]))
        with self._lock:
            self._watch.discard(target)
            if policy.watch_hours > 0:
                self._watching.add(target)
        self._forget(row["id"])
        self._trail("promoted", target, row["id"], actor, verdict=verdict_dict, version=row["candidate_version"])
        self._notify("promoted", target, f"{target}: promoted {row['candidate_version']}"
                     + (f" ({verdict.reason})" if verdict else ""), change_id=row["id"])
        self._tell_strategy(row, verdict)
        return True

    def set_paused(self, target: str, paused: bool, *, actor: str, verdict: Verdict | None = None) -> bool:
        got = self.store.kv_get("change", self._head(target).get("change_id") or "")
        if got is None:
            raise InvalidTransition(f"{target!r} has no change in flight")
        row, rev = got
        new = State.PAUSED if paused else State.CANARY
        if row["state"] == new:
            return True
        check_transition(row["state"], new)
        row.update(state=new, updated=time.time())
        if verdict is not None:
            row["verdict"] = verdict.as_dict()
        if self.store.kv_put("change", row["id"], row, expect_rev=rev) is None:
            return False
        self.invalidate(target)
        self._trail("paused" if paused else "resumed", target, row["id"], actor,
                    verdict=verdict.as_dict() if verdict else None)
        return True

    def request(self, target: str, action: str, actor: str) -> bool:
        """Ask the workers that hold the adapter to promote or roll back (used by the CLI)."""
        got = self.store.kv_get("change", self._head(target).get("change_id") or "")
        if got is None or got[0]["state"] not in (State.CANARY, State.PAUSED):
            raise InvalidTransition(f"{target!r} has no change in flight")
        row, rev = got
        row["requested"] = {"action": action, "actor": actor, "ts": time.time()}
        return self.store.kv_put("change", row["id"], row, expect_rev=rev) is not None

    def pin(self, target: str, version: str, *, adapter: ConfigAdapter | None, actor: str) -> None:
        """Serve ``version`` (restored through the adapter, if any) and hold it: proposals
        are refused until :meth:`unpin`."""
        row = self.latest_row(target)
        if row is not None and row["state"] in IN_FLIGHT:
            raise InvalidTransition(f"{target!r} has change {row['id']} in flight; promote or roll it back first")
        config = get_version(self.store, target, version)
        if config is None:
            raise ConfigError(f"{target!r} has no version {version!r}")
        adapter = adapter or self.adapters.get(target) or self.guard.adapter
        if adapter is not None:
            adapter.rollback_config(agent_id=target, backup_config=copy.deepcopy(config))
        pin = {"actor": actor, "ts": time.time()}
        self._update_head(target, lambda h: h.update(active=version, pinned=True, pin=pin))
        self._trail("pinned", target, None, actor, version=version, through_adapter=adapter is not None)

    def unpin(self, target: str, *, actor: str) -> bool:
        """Let changes be proposed again; ``False`` if the target was not pinned."""
        was = []

        def clear(h: dict) -> None:
            was[:] = [bool(h.get("pinned"))]
            h["pinned"] = False
            h.pop("pin", None)

        self._update_head(target, clear)
        if was and was[0]:
            self._trail("unpinned", target, None, actor)
        return bool(was and was[0])

    def revert(self, target: str, to: str | None, *, adapter: ConfigAdapter | None, actor: str) -> Change:
        """Restore an earlier version through the adapter, recorded as a change of its own
        (promoted at once: a person chose it). ``to`` defaults to the version the last
        promoted change replaced, whose patch is then refused for its cooldown."""
        head = self._head(target)
        latest = self._change_row(head.get("change_id"))
        if latest is not None and latest["state"] in IN_FLIGHT:
            raise InvalidTransition(f"{target!r} has change {latest['id']} {latest['state']}; roll it back instead")
        undone = None
        if to is None:
            promoted = [c for c in self.rows(target) if c["state"] == State.PROMOTED and c.get("kind") != "revert"]
            if not promoted:
                raise InvalidTransition(f"{target!r} has no promoted change to revert; name a version with --to")
            undone = promoted[-1]
            to = undone["baseline_version"]
        config = get_version(self.store, target, to)
        if config is None:
            raise ConfigError(f"{target!r} has no version {to!r}")
        current = head.get("active") or ""
        if to == current:
            raise InvalidTransition(f"{target!r} already serves {to}")
        adapter = adapter or self.adapter_for(target)
        if adapter is None:
            raise ConfigError(f"reverting {target!r} restores a config through its ConfigAdapter, and none is "
                              "available here: revert where the adapter lives (guard.revert), or use an adapter "
                              "that can be rebuilt from the store")
        now = time.time()
        row: dict[str, Any] = {
            "id": new_id(), "target": target, "kind": "revert", "state": State.PROMOTED, "mode": "switch",
            "patch": copy.deepcopy(config), "patch_hash": patch_hash(config), "policy": self.guard.policy.as_dict(),
            "created": now, "updated": now, "started": now, "actor": actor, "weight": 1.0, "step": 0,
            "baseline_version": current, "candidate_version": to, "metadata": {}, "reason": f"reverted to {to} by {actor}",
        }
        try:
            before = adapter.get_config(agent_id=target)
            row["backup"] = copy.deepcopy(before) if isinstance(before, dict) else None
            adapter.rollback_config(agent_id=target, backup_config=copy.deepcopy(config))
            restored = adapter.get_config(agent_id=target)
            error = None if restored == config else "after rollback_config the adapter reports a different config"
        except Exception as exc:
            error = repr(exc)
        if error is not None:
            self._trail("adapter_error", target, row["id"], actor, stage="revert", error=error)
            row["reason"] = f"revert to {to} failed: {error}"
            return self._reject(row, row["reason"])
        self.store.kv_put("change", row["id"], row, expect_rev=0)

        def point(h: dict) -> None:
            h.update(active=to, change_id=row["id"])
            if undone is not None:
                cooldown = RolloutPolicy.from_dict(undone["policy"]).cooldown_hours * 3600
                h.setdefault("blocked", {})[undone["patch_hash"]] = now + cooldown

        self._update_head(target, point)
        self._trail("reverted", target, row["id"], actor, from_version=current, to_version=to,
                    undone_change=undone["id"] if undone else None)
        self._notify("reverted", target, f"{target}: reverted from {current or '-'} to {to} by {actor}",
                     change_id=row["id"])
        return Change.from_row(row)

    def rows(self, target: str | None = None) -> list[dict]:
        """Every stored change row (one target's, or all), oldest first."""
        rows = [v for _, v, _ in self.store.kv_list("change") if target is None or v.get("target") == target]
        return sorted(rows, key=lambda r: r.get("created", 0))

    def _tell_strategy(self, row: dict, verdict: Verdict | None) -> None:
        strategy = self.guard.strategy
        hook = getattr(strategy, "on_verdict", None)
        if callable(hook):
            try:
                hook(Change.from_row(row, verdict), verdict)
            except Exception as exc:
                report("strategy.on_verdict", exc)
                self._trail("strategy_error", row["target"], row["id"], stage="on_verdict", error=repr(exc))

    def tick(self) -> None:
        """Periodic work of this worker: restores to retry, requests to serve, horizons."""
        with self._lock:
            targets = list(self._watch | self._watching)
        for target in targets:
            with fail_open("change.tick"):
                self.evaluate(target)


def _judged_failed(record: CallRecord) -> bool:
    """A call that returned normally and was failed by a later verdict (feedback, a check)."""
    return record.outcome == Outcome.OK and record.success is False


def _serves(view: _View, record: CallRecord) -> bool:
    """Whether a candidate record was served by the view's change (not an earlier change
    with the same candidate version; a few seconds of clock skew between hosts allowed)."""
    return record.version == view.candidate and record.ts >= view.started - 5.0


def _cell_dump(cell: Cell | None) -> list | None:
    if cell is None:
        return None
    return [list(cell.values()), {str(b): n for b, n in cell.hist.items()}]


def _cell_load(data: list | None) -> Cell:
    if not data:
        return Cell()
    values, hist = data
    return Cell.from_values(values, {int(b): n for b, n in hist.items()})
