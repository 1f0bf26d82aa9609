"""The plugin's state: turns in progress, snapshots awaiting their write, quarantined
versions, and the background worker that does every store and disk read after the hook
returned.

Hooks only touch dicts under one lock and queue work; the one disk read on the calling
thread is the snapshot ``pre_tool_call`` takes before a ``skill_manage`` write lands.

Blame (what one skill load's record says): the record of a skill version loaded in a
turn fails when

1. the turn failed: it was interrupted, or did not complete (no final answer, the
   iteration budget ran out, the model or provider gave up: Hermes' ``completed`` is
   false); or
2. a tool error *after the load* follows from the skill:

   a. the failing tool is named in the loaded SKILL.md (a whole word anywhere in it,
      frontmatter included, so ``allowed-tools`` and ``requires_tools`` count), or it
      is ``skill_view`` of this very skill (e.g. a reference file it names is missing); or
   b. the loaded version is the candidate of a change in flight and that tool never
      failed in a recorded turn of the skill under any other version (an error that
      appears only under the new version).

Any other tool error is the environment's, not the skill's: the record stays a success
and keeps the errors as their own measure in its context (``tool_errors``: the turn's
count, ``error_tools``: the tools that failed after the load, ``blamed_tools``: those
charged to the skill). So an error rate that is the same before and after an edit
(say an unrelated ``read_file`` that fails in every turn) never rolls the edit back.
Limitation of (b): an unrelated error rare enough never to have been seen before the
edit is charged to the new version until it is.

Background review: Hermes' review fork (a second agent on a ``bg-review`` thread, with
the write origin ``background_review`` and the foreground's ``session_id``) is told
apart by :func:`in_review`; its ``skill_manage`` writes become changes, and nothing
else it does is recorded (no loads, no tool errors, no turn end), so the foreground
turn's record is exactly its own.

Preloaded skills (``hermes chat -s skill``, ``HERMES_TUI_SKILLS``) live in the agent's
ephemeral system prompt, which only ``pre_api_request`` sees (``request_messages``):
each turn counts them as loads (source ``preloaded``), of the version on disk when the
session first sent them (the prompt is built once per session).
"""

import atexit
import json
import os
import re
import threading
import time
from typing import Any, Dict, List, Optional, Set, Tuple

from sil_core.integration import fail_open
from sil_core.integration import BackgroundWorker, State
from sil_core.records import Outcome
from sil_core.versions import config_version

from . import _compat
from .skills import EditedSkill, SkillConfigAdapter, skill_of, target_for

_mono = time.monotonic
_INVOKED = re.compile(r'\[(?:IMPORTANT: The user has invoked the|Loaded as part of the[^"\]\n]*) "([^"]+)"')
#: the marker Hermes puts before a skill preloaded into the session's system prompt (``-s``)
PRELOADED_MARK = "[IMPORTANT: The user launched this CLI session with the "
_PRELOADED = re.compile(re.escape(PRELOADED_MARK) + r'"([^"]+)" skill preloaded')
#: the name Hermes gives the background review fork's thread (0.19.0)
REVIEW_THREAD = "bg-review"
#: how many of a skill's newest records rule (b) of the blame reads
BLAME_LOOKBACK = 2000
QUARANTINE_REFRESH_S = 2.0
#: the reason of a change rolled back because a newer edit of its skill replaced it
SUPERSEDED = "superseded by a newer edit"
#: how long the exit handler waits for queued hook events (and their judgment)
EXIT_TIMEOUT_S = 5.0
#: open turns and pending snapshots kept at most (sessions that never end are forgotten)
MAX_OPEN = 4096


def in_review() -> bool:
    """Whether this hook call runs in Hermes' background review fork (its write origin,
    set for the fork's whole turn, or its thread), whose reads are not uses."""
    return _compat.write_origin() == _compat.BACKGROUND or threading.current_thread().name == REVIEW_THREAD


_UNSET = object()
#: the store's record of which rollbacks a model was told of (key: the change id)
NOTICE_KIND = "hermes_notice"


class Load:
    """One skill load inside a turn: name, how, when, the version found on disk, and its
    SKILL.md (to tell which tools it names)."""

    __slots__ = ("skill", "source", "t0", "version", "duration_ms", "session", "text")

    def __init__(self, skill: str, source: str, duration_ms: int = 0, session: Optional[str] = None) -> None:
        self.skill, self.source, self.t0, self.duration_ms = skill, source, _mono(), duration_ms
        self.session = session
        self.version: Optional[str] = None
        self.text = ""


class Failure:
    """One failed tool call of a turn: when, which tool, its skill argument, the message."""

    __slots__ = ("t", "tool", "skill", "message")

    def __init__(self, tool: str, skill: str, message: str) -> None:
        self.t, self.tool, self.skill, self.message = _mono(), tool, skill, message


class Turn:
    """What one session's current turn did: the skills it loaded and its tool errors."""

    __slots__ = ("loads", "errors", "first_error", "failures", "tokens_in", "tokens_out", "cost", "requests")

    def __init__(self) -> None:
        self.loads: List[Load] = []
        self.errors = 0
        self.first_error: Optional[str] = None
        self.failures: List[Failure] = []
        self.tokens_in = self.tokens_out = 0.0
        self.cost: Optional[float] = 0.0  # None once a model request had no price
        self.requests = 0

    def metrics(self) -> Optional[Dict[str, float]]:
        """The turn's token usage (and cost, when every request was priced)."""
        if not self.requests:
            return None
        out = {"tokens_in": self.tokens_in, "tokens_out": self.tokens_out}
        if self.cost is not None:
            out["cost_usd"] = self.cost
        return out


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
        self.preloaded: Dict[Tuple[str, str], str] = {}  # (session, skill) -> version first sent
        self.prices: Any = _UNSET  # sil.prices, read on first use
        self.failed_tools: Dict[str, Dict[str, Set[str]]] = {}  # target -> version -> tools that failed
        self.worker = BackgroundWorker("sil-hermes", self._handle, max_queue=10_000)
        self._hook_exit()

    # -- wiring ---------------------------------------------------------------------------
    def attach(self, guard: Any, adapter: Optional[SkillConfigAdapter] = None) -> None:
        """Use ``guard`` (and ``adapter``) for everything the hooks record and guard."""
        self.guard = guard
        if adapter is not None:
            self.adapter = adapter
        self._refreshed = 0.0  # never: the next view re-reads the rollbacks first
        self._observe(guard)
        self._hook_exit()

    def _observe(self, guard: Any) -> None:
        """Watch the guard's decisions (once per guard: the runtime itself is the observer)."""
        with fail_open("hermes.observe"):
            guard.add_observer(self)

    def trail_event(self, event: dict) -> None:
        """An observer of this process's guard: re-read the rollbacks right after it decides
        one (others' decisions are seen within ``QUARANTINE_REFRESH_S``)."""
        if str(event.get("target") or "").startswith("hermes:"):
            self._refreshed = 0.0

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
        """The plugin's guard, opened on first use: the home's store and ``sil:`` settings
        (a bad setting is logged once and the defaults are used: Hermes never stops)."""
        if self.guard is None:
            from ._settings import guard_for

            self.guard = guard_for(self.adapter.home, strict=False, worker_id=f"hermes:{os.getpid()}")
            self._observe(self.guard)
            self._hook_exit()
        return self.guard

    def usage(self, session: Optional[str], model: Any, usage: Any) -> None:
        """Add one model request's usage (Hermes' ``post_api_request``) to the turn; its
        cost from ``sil.prices``, the only price a hook can see."""
        if not isinstance(usage, dict):
            return
        tokens_in = float(usage.get("prompt_tokens") or usage.get("input_tokens") or 0)
        tokens_out = float(usage.get("output_tokens") or 0)
        if self.prices is _UNSET:
            from ._settings import price_table

            self.prices = price_table(self.adapter.home)
        cost = self.prices.cost(model if isinstance(model, str) else None, tokens_in, tokens_out) \
            if self.prices is not None else None
        turn = self.turn(session)
        with self._lock:
            turn.requests += 1
            turn.tokens_in += tokens_in
            turn.tokens_out += tokens_out
            turn.cost = None if cost is None or turn.cost is None else turn.cost + cost

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
        per rollback, across processes: the store keeps who told): which version was
        restored, and why."""
        got = self.rolled.get(skill)
        if got is None or got[0] in self.noticed or self.current.get(skill) != got[1]:
            return None
        with self._lock:
            if got[0] in self.noticed:
                return None
            self.noticed.add(got[0])
        guard = self.guard
        if guard is not None:  # one process tells; one-shot processes (chat -q, -z) must not repeat it
            with fail_open("hermes.notice"):
                if guard.store.kv_put(NOTICE_KIND, got[0], {"skill": skill, "ts": time.time()}, expect_rev=0) is None:
                    return None
        change_id, version, reason, manual = got
        if manual:
            return (f"sil-guard: skill '{skill}' was rolled back to version {version} by a person ({reason}). "
                    "Do not make the same edit again without being asked.")
        return (f"sil-guard: skill '{skill}' was rolled back to version {version} because its last edit "
                f"regressed ({reason}). Do not make the same edit again.")

    def loaded(self, session: Optional[str], skill: str, source: str, duration_ms: int = 0) -> None:
        load = Load(skill, source, duration_ms, session)
        self.turn(session).loads.append(load)
        self.worker.submit(("load", load))

    def tool_error(self, session: Optional[str], tool: str, message: Optional[str], skill: str = "") -> None:
        """Count a failed tool call of the turn (the blame decides at its end whom it charges)."""
        t = self.turn(session)
        text = f"{tool}: {message or 'error'}"[:200]
        with self._lock:
            t.errors += 1
            t.failures.append(Failure(tool, skill, text))
            if t.first_error is None:
                t.first_error = text

    def slash_loads(self, session: Optional[str], message: str) -> None:
        for name in dict.fromkeys(_INVOKED.findall(message[:100_000])):
            self.loaded(session, skill_of(name), "slash")

    def preloaded_loads(self, session: Optional[str], system: str) -> None:
        """Count the skills preloaded into the system prompt as loads of this turn (once a
        turn, though ``pre_api_request`` fires at every model call)."""
        names = dict.fromkeys(skill_of(n) for n in _PRELOADED.findall(system))
        if not names:
            return
        turn = self.turn(session)
        with self._lock:
            new = [n for n in names if not any(x.source == "preloaded" and x.skill == n for x in turn.loads)]
        for name in new:
            self.loaded(session, name, "preloaded")

    def pinned(self, skill: str) -> bool:
        """Whether the skill's target is pinned (this worker's view: never waits on the store)."""
        guard = self.guard
        return guard is not None and bool(guard.view(target_for(skill)).pinned)

    def snapshot(self, call_id: Optional[str], skill: str, args: Any = None) -> Optional[str]:
        """Keep the skill as it is before a ``skill_manage`` write; the reason to refuse the
        write when it would bring back a quarantined (rolled-back) version, else ``None``."""
        before = self.adapter.get_config(skill)  # the disk read that must precede the write
        self.refresh_quarantine()  # at most every QUARANTINE_REFRESH_S, or after a decision here
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
        # the disk right after this write (the next write may land before the worker runs)
        after = self.adapter.get_config(skill) if status == "ok" else got[0]
        self.worker.submit(("edit", skill, got[0], after, origin, status, action, session))

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
        config = self.adapter.get_config(load.skill)
        load.version = self.current[load.skill] = config_version(config)
        load.text = str((config.get("files") or {}).get("SKILL.md") or "")
        if load.source == "preloaded":  # the session's prompt holds the version it was built with
            key = (load.session or "", load.skill)
            with self._lock:
                load.version = self.preloaded.setdefault(key, load.version)
                if len(self.preloaded) > MAX_OPEN:
                    self.preloaded.pop(next(iter(self.preloaded)))
        self._guard()
        self.refresh_quarantine()

    def _on_edit(self, skill: str, before: dict, after: dict, origin: str, status: str, action: str,
                 session: Optional[str]) -> None:
        """Make the guard agree with the disk after a ``skill_manage`` write (``before`` and
        ``after`` were read around the write itself): a created skill becomes the skill's
        first version (the baseline of its later edits); an edit becomes a switch-mode
        change; an edit while a change is in flight supersedes it (ended without touching
        the disk, which holds the newer edit, then the edit is proposed against the same
        baseline); an edit the guard refuses (cooldown, pinned) is undone on disk."""
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
            if baseline is not None and guard.rollback(target, actor=actor, reason=SUPERSEDED, cooldown=False,
                                                       restore=False):
                superseded, before = latest.id, baseline
                adapter = EditedSkill(self.adapter, baseline)  # the disk holds the edit: nothing to write
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
        """Record the turn against every skill version it loaded, each with its own blame
        (see the module docstring)."""
        guard = self._guard()
        for load in turn.loads:
            target = target_for(load.skill)
            self.touched.add(target)
            after = [f for f in turn.failures if f.t >= load.t0]
            blamed = self._blame(guard, target, load, after)
            if interrupted:
                outcome, error_type, message = Outcome.INTERRUPTED, "Interrupted", "the turn was interrupted"
            elif completed is False:
                outcome, error_type, message = Outcome.ERROR, "TurnFailed", "the turn did not complete"
            elif blamed:
                outcome, error_type, message = Outcome.ERROR, "ToolError", blamed[0].message
            else:
                outcome, error_type, message = Outcome.OK, None, None
            tools = list(dict.fromkeys(f.tool for f in after))
            with self._lock:
                self.failed_tools.setdefault(target, {}).setdefault(load.version or "", set()).update(tools)
            routed, arm, _ = guard.route(target, key=session)
            version = routed if routed is None or routed == load.version else load.version
            guard.record(target, success=outcome == Outcome.OK, outcome=outcome, latency_s=max(0.0, t_end - load.t0),
                         version=version, arm=arm if version == routed and routed is not None else None,
                         error_type=error_type, error_message=message,
                         context={"session_id": session, "source": load.source, "content_version": load.version,
                                  "load_ms": load.duration_ms, "tool_errors": turn.errors, "error_tools": tools,
                                  "blamed_tools": list(dict.fromkeys(f.tool for f in blamed))},
                         metrics=turn.metrics())

    def blame_turn(self, guard: Any, skill: str, text: str, version: Optional[str],
                   failures: List[Failure]) -> List[Failure]:
        """The failures of a turn that served ``skill`` at ``version`` (its SKILL.md
        ``text``) and follow from it (``SkillGuard.call``: the same rules as a load's)."""
        load = Load(skill, "guarded")
        load.version, load.text = version, text
        target = target_for(skill)
        blamed = self._blame(guard, target, load, failures)
        with self._lock:
            self.failed_tools.setdefault(target, {}).setdefault(version or "", set()).update(f.tool for f in failures)
        return blamed

    def _blame(self, guard: Any, target: str, load: Load, failures: List[Failure]) -> List[Failure]:
        """The failures (after the load) that follow from the loaded skill version: rule
        (a), a tool its SKILL.md names or a ``skill_view`` of itself; rule (b), under the
        candidate of a change in flight, a tool that never failed under another version."""
        blamed = [f for f in failures if f.skill == load.skill or names_tool(load.text, f.tool)]
        rest = [f for f in failures if f not in blamed]
        if not rest or load.version is None:
            return blamed
        change = guard.change(target, flush=False)
        if change is None or not change.in_flight or change.candidate_version != load.version:
            return blamed
        before = self._failed_elsewhere(guard, target, load.version)
        return blamed + [f for f in rest if f.tool not in before]

    def _failed_elsewhere(self, guard: Any, target: str, version: str) -> Set[str]:
        """The tools that failed in recorded turns of the skill under a version other than
        ``version`` (the store's newest records, and this process's unflushed ones)."""
        with self._lock:
            seen = {t for v, tools in self.failed_tools.get(target, {}).items() if v != version for t in tools}
        for record in guard.store.read_calls(target, limit=BLAME_LOOKBACK):
            context = _context(record.context)
            if (context.get("content_version") or record.version) != version:
                seen.update(t for t in context.get("error_tools") or () if isinstance(t, str))
        return seen

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
        rolled = {skill_of(t): (c.id, c.baseline_version, _reason(c), bool(c.verdict and c.verdict.metric == "manual"))
                  for t, c in latest.items() if c.state == State.ROLLED_BACK and _reason(c) != SUPERSEDED}
        active = {skill: guard.view(target_for(skill), fresh=True).active for skill in blocked}
        self.blocked, self.active, self.rolled = blocked, active, rolled


def names_tool(text: str, tool: str) -> bool:
    """Whether SKILL.md ``text`` names the tool (a whole word: ``read_file``, not ``read``)."""
    return bool(tool) and re.search(rf"(?<![\w-]){re.escape(tool)}(?![\w-])", text) is not None


def _context(raw: Any) -> Dict[str, Any]:
    """A record's context as a dict (stores keep it as JSON text)."""
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError:
            return {}
    return raw if isinstance(raw, dict) else {}


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
