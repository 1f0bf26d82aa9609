"""The plugin's state: turns in progress, snapshots awaiting their write, quarantined
versions, and the background worker that does every store and disk read after the hook
returned.

Hooks only touch dicts under one lock and queue work; the one disk read on the calling
thread is the snapshot ``pre_tool_call`` takes before a ``skill_manage`` write lands.
"""

import os
import re
import threading
import time
from typing import Any, Dict, List, Optional, Tuple

from sil_core.integration import fail_open
from sil_core.integration import BackgroundWorker, State
from sil_core.records import Outcome
from sil_core.versions import config_version

from . import _compat
from .skills import EditedSkill, SkillConfigAdapter, skill_of, target_for

_mono = time.monotonic
_INVOKED = re.compile(r'\[(?:IMPORTANT: The user has invoked the|Loaded as part of the[^"\]\n]*) "([^"]+)"')
QUARANTINE_REFRESH_S = 2.0
#: open turns and pending snapshots kept at most (sessions that never end are forgotten)
MAX_OPEN = 4096


class Load:
    """One skill load inside a turn: name, how, when, and the version found on disk."""

    __slots__ = ("skill", "source", "t0", "version", "duration_ms")

    def __init__(self, skill: str, source: str, duration_ms: int = 0) -> None:
        self.skill, self.source, self.t0, self.duration_ms = skill, source, _mono(), duration_ms
        self.version: Optional[str] = None


class Turn:
    """What one session's current turn did: the skills it loaded and its tool errors."""

    __slots__ = ("loads", "errors", "first_error")

    def __init__(self) -> None:
        self.loads: List[Load] = []
        self.errors = 0
        self.first_error: Optional[str] = None


class Runtime:
    """Process-wide plugin state (Hermes' plugin manager is process-global too)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.guard: Any = None
        self.adapter = SkillConfigAdapter()
        self.turns: Dict[str, Turn] = {}
        self.pending: Dict[Tuple[Optional[str], str], Tuple[dict, str]] = {}
        self.current: Dict[str, str] = {}  # skill -> version last seen on disk
        self.blocked: Dict[str, Dict[str, str]] = {}  # skill -> {version: reason}
        self.owned: set = set()  # sessions a SkillGuard.call records itself (outer layer wins)
        self._refreshed = 0.0
        self.worker = BackgroundWorker("sil-hermes", self._handle, max_queue=10_000)

    # -- wiring ---------------------------------------------------------------------------
    def attach(self, guard: Any, adapter: Optional[SkillConfigAdapter] = None) -> None:
        """Use ``guard`` (and ``adapter``) for everything the hooks record and guard."""
        self.guard = guard
        if adapter is not None:
            self.adapter = adapter
        self._refreshed = 0.0

    def _guard(self) -> Any:
        if self.guard is None:
            from sil_core import Guard

            home = self.adapter.home
            url = os.environ.get("SIL_STORE") or f"sqlite:///{home / 'sil' / 'sil.db'}"
            (home / "sil").mkdir(parents=True, exist_ok=True)
            self.guard = Guard(url, worker_id=f"hermes:{os.getpid()}")
        return self.guard

    def drain(self, timeout: Optional[float] = 10.0) -> bool:
        """Wait until every queued hook event is handled."""
        return self.worker.drain(timeout)

    # -- called by the hooks (memory only) -----------------------------------------------
    def turn(self, session: Optional[str]) -> Turn:
        with self._lock:
            t = self.turns.get(session or "")
            if t is None:
                if len(self.turns) >= MAX_OPEN:  # sessions that never ended: forget the oldest
                    self.turns.pop(next(iter(self.turns)))
                t = self.turns[session or ""] = Turn()
            return t

    def blocked_load(self, session: Optional[str], skill: str) -> None:
        self.worker.submit(("blocked", skill, self.current.get(skill), session))

    def block_reason(self, skill: str) -> Optional[str]:
        versions = self.blocked.get(skill)
        if not versions:
            return None
        version = self.current.get(skill)
        return versions.get(version) if version else None

    def loaded(self, session: Optional[str], skill: str, source: str, duration_ms: int = 0) -> None:
        load = Load(skill, source, duration_ms)
        self.turn(session).loads.append(load)
        self.worker.submit(("load", load))

    def tool_error(self, session: Optional[str], tool: str, message: Optional[str]) -> None:
        t = self.turn(session)
        with self._lock:
            t.errors += 1
            if t.first_error is None:
                t.first_error = f"{tool}: {message or 'error'}"[:200]

    def slash_loads(self, session: Optional[str], message: str) -> None:
        for name in dict.fromkeys(_INVOKED.findall(message[:100_000])):
            self.loaded(session, skill_of(name), "slash")

    def snapshot(self, call_id: Optional[str], skill: str) -> None:
        before = self.adapter.get_config(skill)  # the disk read that must precede the write
        with self._lock:
            if len(self.pending) >= MAX_OPEN:
                self.pending.pop(next(iter(self.pending)))
            self.pending[(call_id, skill)] = (before, _compat.write_origin())

    def edited(self, call_id: Optional[str], skill: str, status: str, action: str, session: Optional[str]) -> None:
        with self._lock:
            got = self.pending.pop((call_id, skill), None)
        if got is None:
            return
        background = _compat.BACKGROUND in (got[1], _compat.write_origin())
        origin = _compat.BACKGROUND if background else "foreground"
        self.worker.submit(("edit", skill, got[0], origin, status, action, session))

    def end(self, session: Optional[str], completed: Any, interrupted: Any) -> Optional[Turn]:
        key = session or ""
        with self._lock:
            if key in self.owned:  # a SkillGuard.call records this turn itself
                return self.turns.get(key)
            turn = self.turns.pop(key, None)
        if turn is not None and turn.loads:
            self.worker.submit(("end", turn, completed, interrupted, _mono(), session))
        return turn

    def own(self, session: Optional[str]) -> None:
        with self._lock:
            self.owned.add(session or "")
            self.turns.pop(session or "", None)

    def release(self, session: Optional[str]) -> Optional[Turn]:
        with self._lock:
            self.owned.discard(session or "")
            return self.turns.pop(session or "", None)

    # -- the background worker (disk and store) -------------------------------------------
    def _handle(self, item: tuple) -> None:
        kind = item[0]
        if kind == "load":
            self._on_load(item[1])
        elif kind == "edit":
            self._on_edit(*item[1:])
        elif kind == "end":
            self._on_end(*item[1:])
        elif kind == "blocked":
            _, skill, version, session = item
            self._guard().record(target_for(skill), success=False, outcome=Outcome.BLOCKED, latency_s=0.0,
                                 context={"session_id": session, "content_version": version})

    def version_on_disk(self, skill: str) -> str:
        version = config_version(self.adapter.get_config(skill))
        self.current[skill] = version
        return version

    def _on_load(self, load: Load) -> None:
        load.version = self.version_on_disk(load.skill)
        self._guard()
        self.refresh_quarantine()

    def _on_edit(self, skill: str, before: dict, origin: str, status: str, action: str, session: Optional[str]) -> None:
        after = self.adapter.get_config(skill)
        self.current[skill] = config_version(after)
        if status != "ok" or after == before:
            return
        guard = self._guard()
        patch = {k: after[k] for k in after if after[k] != before.get(k)}
        change = guard.propose(target_for(skill), patch, adapter=EditedSkill(self.adapter, before), mode="switch",
                               actor=f"hermes:{origin}")
        with fail_open("hermes.edit_log"):
            guard.store.kv_put("hermes_edit", f"{target_for(skill)}@{time.time():.6f}", {
                "skill": skill, "writer": origin, "action": action, "session_id": session, "ts": time.time(),
                "before": config_version(before), "after": config_version(after), "change_id": change.id,
                "change_state": change.state}, expect_rev=0)
        self.refresh_quarantine(force=True)

    def _on_end(self, turn: Turn, completed: Any, interrupted: Any, t_end: float, session: Optional[str]) -> None:
        guard = self._guard()
        if interrupted:
            outcome = Outcome.INTERRUPTED
        elif turn.errors or completed is False:
            outcome = Outcome.ERROR
        else:
            outcome = Outcome.OK
        for load in turn.loads:
            target = target_for(load.skill)
            routed, arm, _ = guard.route(target, key=session)
            version = routed if routed is None or routed == load.version else load.version
            guard.record(target, success=outcome == Outcome.OK, outcome=outcome, latency_s=max(0.0, t_end - load.t0),
                         version=version, arm=arm if version == routed and routed is not None else None,
                         error_type="ToolError" if turn.errors else None, error_message=turn.first_error,
                         context={"session_id": session, "source": load.source, "content_version": load.version,
                                  "load_ms": load.duration_ms, "tool_errors": turn.errors})

    def refresh_quarantine(self, force: bool = False) -> None:
        """Re-read which versions were rolled back (at most every few seconds)."""
        now = _mono()
        if self.guard is None or (not force and now - self._refreshed < QUARANTINE_REFRESH_S):
            return
        self._refreshed = now
        blocked: Dict[str, Dict[str, str]] = {}
        for change in self.guard.changes():
            if change.state == State.ROLLED_BACK and change.target.startswith("hermes:"):
                reason = (change.verdict.reason if change.verdict else "") or change.reason or "it regressed"
                blocked.setdefault(skill_of(change.target), {})[change.candidate_version] = reason
        self.blocked = blocked


_runtime = Runtime()


def runtime() -> Runtime:
    """The process-wide plugin state."""
    return _runtime
