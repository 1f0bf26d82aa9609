"""The plugin's state: turns in progress, snapshots awaiting their write, quarantined
versions, and the background worker that does every store and disk read after the hook
returned.

Hooks only touch dicts under one lock and queue work; the one disk read on the calling
thread is the snapshot ``pre_tool_call`` takes before a ``skill_manage`` write lands.
"""

import atexit
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
#: the reason of a change rolled back because a newer edit of its skill replaced it
SUPERSEDED = "superseded by a newer edit"
#: how long the exit handler waits for queued hook events (and their judgment)
EXIT_TIMEOUT_S = 5.0
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
        self.current: Dict[str, str] = {}  # skill -> version last seen on disk (records only)
        self.blocked: Dict[str, Dict[str, str]] = {}  # skill -> {rolled-back candidate version: reason}
        self.active: Dict[str, Optional[str]] = {}  # skill -> its active version (skills in ``blocked``)
        self.rolled: Dict[str, Tuple[str, str, str]] = {}  # skill -> (change id, restored version, reason)
        self.noticed: set = set()  # ids of the rollbacks this process told the model about
        self.owned: set = set()  # sessions a SkillGuard.call records itself (outer layer wins)
        self._refreshed = 0.0
        self.touched: set = set()  # targets this process recorded turns of (judged at exit)
        self.worker = BackgroundWorker("sil-hermes", self._handle, max_queue=10_000)
        self._hook_exit()

    # -- wiring ---------------------------------------------------------------------------
    def attach(self, guard: Any, adapter: Optional[SkillConfigAdapter] = None) -> None:
        """Use ``guard`` (and ``adapter``) for everything the hooks record and guard."""
        self.guard = guard
        if adapter is not None:
            self.adapter = adapter
        self._refreshed = 0.0  # never: the next view re-reads the rollbacks first
        self._hook_exit()

    def _hook_exit(self) -> None:
        """(Re-)register the exit handler so it runs before the guards' own (atexit runs
        the latest registration first): a one-shot process (``hermes chat -q``) exits
        right after its turn, and the turn's record must not be lost."""
        with fail_open("hermes.atexit"):
            atexit.unregister(self.at_exit)
            atexit.register(self.at_exit)

    def at_exit(self) -> None:
        """Drain the queued hook events (bounded), then judge the targets this process
        recorded turns of, so a change that a few one-shot processes broke is rolled back."""
        deadline = _mono() + EXIT_TIMEOUT_S
        with fail_open("hermes.exit_drain"):
            self.worker.drain(EXIT_TIMEOUT_S)
        guard = self.guard
        if guard is None or getattr(guard, "closed", False):
            return
        with fail_open("hermes.exit_flush"):
            guard.flush()
        for target in sorted(self.touched):
            if _mono() > deadline:
                break
            with fail_open("hermes.exit_evaluate"):
                change = guard.change(target, flush=False)
                if change is not None and change.state in (State.CANARY, State.SWITCHED):
                    guard.evaluate(target)

    def _guard(self) -> Any:
        if self.guard is None:
            from sil_core import Guard

            home = self.adapter.home
            url = os.environ.get("SIL_STORE") or f"sqlite:///{home / 'sil' / 'sil.db'}"
            (home / "sil").mkdir(parents=True, exist_ok=True)
            self.guard = Guard(url, worker_id=f"hermes:{os.getpid()}")
            self._hook_exit()
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
        """Why a ``skill_view`` of the skill must be blocked now, else ``None``: the version
        on disk now is the candidate of a rolled-back change and not the active version
        (a person may restore it: ``sil hermes rollback --to``). Re-reads the rollbacks
        when they are older than ``QUARANTINE_REFRESH_S`` (or were never read in this
        process); reads the disk only for a skill that has rolled-back versions."""
        self.refresh_quarantine(first=True)
        versions = self.blocked.get(skill)
        if not versions:
            return None
        version = self.version_on_disk(skill)
        if version == self.active.get(skill):
            return None
        return versions.get(version)

    def notice(self, skill: str) -> Optional[str]:
        """A short note for the model on the first load of a skill after its rollback (once
        per rollback and process): which version was restored, and why."""
        got = self.rolled.get(skill)
        if got is None or got[0] in self.noticed or self.current.get(skill) != got[1]:
            return None
        with self._lock:
            if got[0] in self.noticed:
                return None
            self.noticed.add(got[0])
        return (f"sil-guard: skill '{skill}' was rolled back to version {got[1]} because its last edit "
                f"regressed ({got[2]}). Do not make the same edit again.")

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

    def pinned(self, skill: str) -> bool:
        """Whether the skill's target is pinned (this worker's view: never waits on the store)."""
        guard = self.guard
        return guard is not None and bool(guard.view(target_for(skill)).pinned)

    def snapshot(self, call_id: Optional[str], skill: str, args: Any = None) -> Optional[str]:
        """Keep the skill as it is before a ``skill_manage`` write; the reason to refuse the
        write when it would bring back a quarantined (rolled-back) version, else ``None``."""
        before = self.adapter.get_config(skill)  # the disk read that must precede the write
        versions = self.blocked.get(skill)
        if versions and isinstance(args, dict):
            predicted = _predict(before, args)
            if predicted is not None:
                version = config_version(predicted)
                if version in versions and version != self.active.get(skill):
                    return f"version {version} ({versions[version]})"
        with self._lock:
            if len(self.pending) >= MAX_OPEN:
                self.pending.pop(next(iter(self.pending)))
            self.pending[(call_id, skill)] = (before, _compat.write_origin())
        return None

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
        """Make the guard agree with the disk after a ``skill_manage`` write: a created skill
        becomes the skill's first version (the baseline of its later edits); an edit becomes
        a switch-mode change; an edit while a change is in flight supersedes it (rolled back,
        then the edit is proposed against the same baseline); an edit the guard refuses
        (cooldown, pinned) is undone on disk."""
        after = self.adapter.get_config(skill)
        self.current[skill] = config_version(after)
        if status != "ok" or after == before:
            return
        guard = self._guard()
        target, actor = target_for(skill), f"hermes:{origin}"
        latest = guard.change(target)
        in_flight = latest is not None and latest.in_flight
        superseded = None
        adapter: Any = EditedSkill(self.adapter, before)
        if in_flight:
            baseline = self._version_config(guard, target, latest.baseline_version)
            if baseline is not None and guard.rollback(target, actor=actor, reason=SUPERSEDED, cooldown=False):
                superseded, before = latest.id, baseline
                adapter = self.adapter  # the disk holds the baseline again: the proposal writes the edit
            # else another worker holds it: the proposal is refused below and the edit undone
        if not in_flight and not before.get("files") and after.get("files") \
                and not guard.view(target, fresh=True).pinned:
            self._adopt(guard, target, after, actor)
            change = None
        elif superseded is not None and after == before:  # the edit went back to the baseline
            change = None
        else:
            patch = {k: after[k] for k in after if after[k] != before.get(k)}
            change = guard.propose(target, patch, adapter=adapter, mode="switch", actor=actor)
            if not change.in_flight:  # refused (cooldown, pinned, another change): undo it on disk
                self.adapter.rollback_config(skill, before)
                self.current[skill] = config_version(before)
        with fail_open("hermes.edit_log"):
            guard.store.kv_put("hermes_edit", f"{target}@{time.time():.6f}", {
                "skill": skill, "writer": origin, "action": action, "session_id": session, "ts": time.time(),
                "before": config_version(before), "after": config_version(after),
                "change_id": change.id if change else None, "change_state": change.state if change else "adopted",
                "superseded": superseded}, expect_rev=0)
        self.refresh_quarantine(force=True)

    @staticmethod
    def _version_config(guard: Any, target: str, version: Optional[str]) -> Optional[dict]:
        for v in guard.versions(target):
            if v["version"] == version:
                return v["config"]
        return None

    def _adopt(self, guard: Any, target: str, config: dict, actor: str) -> None:
        """Record a skill the agent created as its target's active version, without a
        change (there is nothing to roll back to but deleting it), so its later edits are
        guarded against it."""
        guard.adopt(target, config, actor=actor)

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
            self.touched.add(target)
            routed, arm, _ = guard.route(target, key=session)
            version = routed if routed is None or routed == load.version else load.version
            guard.record(target, success=outcome == Outcome.OK, outcome=outcome, latency_s=max(0.0, t_end - load.t0),
                         version=version, arm=arm if version == routed and routed is not None else None,
                         error_type="ToolError" if turn.errors else None, error_message=turn.first_error,
                         context={"session_id": session, "source": load.source, "content_version": load.version,
                                  "load_ms": load.duration_ms, "tool_errors": turn.errors})

    def refresh_quarantine(self, force: bool = False, first: bool = False) -> None:
        """Re-read which versions were rolled back, and the active version of their skills
        (at most every ``QUARANTINE_REFRESH_S``; ``force``: now; ``first``: also when never
        read in this process, opening the guard if needed)."""
        now = _mono()
        never = not self._refreshed
        if not force and not never and now - self._refreshed < QUARANTINE_REFRESH_S:
            return
        guard = self._guard() if first and never else self.guard
        if guard is None:
            return
        self._refreshed = now
        blocked: Dict[str, Dict[str, str]] = {}
        latest: Dict[str, Any] = {}
        for change in guard.changes():
            if not change.target.startswith("hermes:"):
                continue
            latest[change.target] = change
            if change.state == State.ROLLED_BACK:
                reason = _reason(change)
                if reason == SUPERSEDED:  # replaced by a newer edit, not found to regress
                    continue
                blocked.setdefault(skill_of(change.target), {})[change.candidate_version] = reason
        rolled = {skill_of(t): (c.id, c.baseline_version, _reason(c)) for t, c in latest.items()
                  if c.state == State.ROLLED_BACK and _reason(c) != SUPERSEDED}
        active = {skill: guard.view(target_for(skill), fresh=True).active for skill in blocked}
        self.blocked, self.active, self.rolled = blocked, active, rolled


def _reason(change: Any) -> str:
    return (change.verdict.reason if change.verdict else "") or change.reason or "it regressed"


def _predict(before: dict, args: dict) -> Optional[dict]:
    """The skill a ``skill_manage`` edit would write, when that is plain to see (an exact
    ``patch``, an ``edit``, a ``write_file``); ``None`` otherwise."""
    files = dict(before.get("files") or {})
    action = args.get("action")
    if action == "edit" and isinstance(args.get("content"), str):
        files["SKILL.md"] = args["content"]
    elif action == "write_file" and isinstance(args.get("file_path"), str) and isinstance(args.get("file_content"), str):
        files[args["file_path"]] = args["file_content"]
    elif action == "patch":
        path, old, new = args.get("file_path") or "SKILL.md", args.get("old_string"), args.get("new_string")
        text = files.get(path)
        if not (isinstance(text, str) and isinstance(old, str) and old and isinstance(new, str)):
            return None
        count = text.count(old)
        if count == 0 or (count > 1 and not args.get("replace_all")):
            return None
        files[path] = text.replace(old, new)
    else:
        return None
    return {"files": files, "config": before.get("config") or {}}


_runtime = Runtime()


def runtime() -> Runtime:
    """The process-wide plugin state."""
    return _runtime
