"""``SkillGuard``: one guarded Hermes agent turn with a skill loaded.

The turn is ``agent.run_conversation(<"/skill task" message>)``, timed and recorded
against the skill version that served it. During a canary the arm's version is served
(its SKILL.md goes into the message, whatever is on disk); in switch mode and without a
change, the skill on disk is. The turn fails when it did not complete, was interrupted,
or (with the plugin enabled) a tool failed during it; ``success=`` may judge the result
further. A skill Hermes does not have raises :class:`LookupError` before anything is recorded.

``SkillGuard()`` without a guard uses the plugin's: the store of Hermes' home (the rule of
``sil_core.store.default_store_source``) with the ``sil:`` settings of its ``config.yaml``.
"""

import logging
import os
from typing import Any, Callable, Optional

from sil_core.store import XDG_DEFAULT, default_store_source

from . import _settings
from ._compat import skill_message
from ._runtime import runtime
from .skills import SkillConfigAdapter, target_for

_log = logging.getLogger("sil_hermes")

__all__ = ("SkillGuard",)


class SkillGuard:
    """Guarded skill calls on a :class:`sil_core.Guard`.

    Args:
        guard: the guard that records the calls and judges the skill's changes (default:
            the plugin's, on Hermes' store with the ``sil:`` settings; a bad setting raises
            :class:`sil_core.ConfigError`). The plugin's hooks in this process use it too.
        adapter: the skills' :class:`SkillConfigAdapter` (default: Hermes' home).
        success: ``success(result) -> bool`` applied to a completed turn's result dict.
    """

    def __init__(self, guard: Any = None, *, adapter: Optional[SkillConfigAdapter] = None,
                 success: Optional[Callable[[dict], Any]] = None) -> None:
        self.adapter = adapter or SkillConfigAdapter()
        home = self.adapter.home
        if guard is None:  # the plugin's guard; a bad sil: section raises here, naming the key
            _settings.load(home)
            guard = runtime().guard or _settings.guard_for(home, strict=True, worker_id=f"hermes:{os.getpid()}")
        else:
            _warn_other_store(guard, home)
        self.guard = guard
        self.success = success
        runtime().attach(guard, self.adapter)

    def call(self, skill: str, task: str, *, agent_factory: Callable[[], Any], key: Any = None) -> dict:
        """Run one agent turn of ``/skill task`` and record it; returns Hermes' result dict.

        ``agent_factory()`` builds the ``AIAgent`` (model, provider, toolsets); ``key``
        routes the call to the same canary arm every time. The agent's exceptions propagate
        unchanged (and are recorded as errors)."""
        rt = runtime()
        folder = self.adapter.skill_dir(skill)
        message = skill_message(skill, task, None, folder) if (folder / "SKILL.md").is_file() else None
        if message is None:  # not recorded: a typo must not create a target
            raise LookupError(f"Hermes has no skill {skill!r} in {self.adapter.home / 'skills'} (or it is "
                              "disabled); `hermes skills list` shows the installed ones")
        with self.guard.call(target_for(skill), key=key, context={"skill": skill}) as call:
            content = None
            if call.arm is not None and call.config is not None:
                served = (call.config.get("files") or {}).get("SKILL.md")
                if isinstance(served, str) and served != self._on_disk(skill):
                    content = served
            if content is not None:
                message = skill_message(skill, task, content, folder) or message
            agent = agent_factory()
            session = getattr(agent, "session_id", None)
            rt.own(session)
            try:
                result = agent.run_conversation(message)
            finally:
                turn = rt.release(session)
            text = content if content is not None else (self._on_disk(skill) or "")
            failures = list(turn.failures) if turn else []
            blamed = [f.tool for f in rt.blame_turn(self.guard, skill, text, call.version, failures)]
            call.success = self._judge(result, blamed)
            call.metrics.update(_usage(turn, result))
            call.context = {"skill": skill, "session_id": session, "served_from": "version" if content else "disk",
                            "tool_errors": turn.errors if turn else 0,
                            "error_tools": list(dict.fromkeys(f.tool for f in failures)),
                            "blamed_tools": list(dict.fromkeys(blamed))}
        return result

    def _on_disk(self, skill: str) -> Optional[str]:
        return (self.adapter.get_config(skill)["files"] or {}).get("SKILL.md")

    def _judge(self, result: Any, blamed: list) -> bool:
        """The turn failed, a tool error follows from the skill (a tool its SKILL.md names,
        or its own files), or ``success`` says no; other tool errors do not fail the skill."""
        if not isinstance(result, dict) or not result.get("completed") or result.get("failed") \
                or result.get("interrupted"):
            return False
        if blamed:
            return False
        return bool(self.success(result)) if self.success is not None else True


def _usage(turn: Any, result: Any) -> dict:
    """The turn's tokens (from the plugin's ``post_api_request``), and its cost: priced
    with ``sil.prices``, else Hermes' own estimate when it has one (its agent is this call's)."""
    metrics = (turn.metrics() if turn is not None else None) or {}
    if "cost_usd" not in metrics and isinstance(result, dict) and result.get("cost_status") not in (None, "unknown"):
        cost = result.get("estimated_cost_usd")
        if isinstance(cost, (int, float)) and not isinstance(cost, bool):
            metrics["cost_usd"] = float(cost)
    return metrics


def _warn_other_store(guard: Any, home: Any) -> None:
    """Warn when ``guard`` records in the embedded default store while this Hermes home's
    store is another (``SkillGuard(Guard())`` before Hermes was ever in use)."""
    url = getattr(getattr(guard, "store", None), "url", None)
    ours, why = _settings.store_source(home)
    if url is not None and url != ours and default_store_source() == (url, XDG_DEFAULT):
        _log.warning("sil-guard: this SkillGuard's guard records in %s, but the sil plugin and `sil hermes` use "
                     "%s (%s); use SkillGuard() without a guard, or Guard(%r)", url, ours, why, ours)
