"""``SkillGuard``: one guarded Hermes agent turn with a skill loaded.

The turn is ``agent.run_conversation(<"/skill task" message>)``, timed and recorded
against the skill version that served it. During a canary the arm's version is served
(its SKILL.md goes into the message, whatever is on disk); in switch mode and without a
change, the skill on disk is. The turn fails when it did not complete, was interrupted,
or (with the plugin enabled) a tool failed during it; ``success=`` may judge the result
further.
"""

from typing import Any, Callable, Optional

from ._compat import skill_message
from ._runtime import runtime
from .skills import SkillConfigAdapter, target_for

__all__ = ("SkillGuard",)


class SkillGuard:
    """Guarded skill calls on a :class:`sil_core.Guard`.

    Args:
        guard: the guard that records the calls and judges the skill's changes. The
            plugin's hooks in this process use it too (edits become its changes).
        adapter: the skills' :class:`SkillConfigAdapter` (default: Hermes' home).
        success: ``success(result) -> bool`` applied to a completed turn's result dict.
    """

    def __init__(self, guard: Any, *, adapter: Optional[SkillConfigAdapter] = None,
                 success: Optional[Callable[[dict], Any]] = None) -> None:
        self.guard = guard
        self.adapter = adapter or SkillConfigAdapter()
        self.success = success
        runtime().attach(guard, self.adapter)

    def call(self, skill: str, task: str, *, agent_factory: Callable[[], Any], key: Any = None) -> dict:
        """Run one agent turn of ``/skill task`` and record it; returns Hermes' result dict.

        ``agent_factory()`` builds the ``AIAgent`` (model, provider, toolsets); ``key``
        routes the call to the same canary arm every time. The agent's exceptions propagate
        unchanged (and are recorded as errors)."""
        rt = runtime()
        with self.guard.call(target_for(skill), key=key, context={"skill": skill}) as call:
            content = None
            if call.arm is not None and call.config is not None:
                served = (call.config.get("files") or {}).get("SKILL.md")
                if isinstance(served, str) and served != self._on_disk(skill):
                    content = served
            message = skill_message(skill, task, content, self.adapter.skill_dir(skill))
            if message is None:
                raise LookupError(f"Hermes has no skill {skill!r} (looked in {self.adapter.home / 'skills'})")
            agent = agent_factory()
            session = getattr(agent, "session_id", None)
            rt.own(session)
            try:
                result = agent.run_conversation(message)
            finally:
                turn = rt.release(session)
            call.success = self._judge(result, turn)
            call.context = {"skill": skill, "session_id": session, "served_from": "version" if content else "disk",
                            "tool_errors": turn.errors if turn else 0}
        return result

    def _on_disk(self, skill: str) -> Optional[str]:
        return (self.adapter.get_config(skill)["files"] or {}).get("SKILL.md")

    def _judge(self, result: Any, turn: Any) -> bool:
        if not isinstance(result, dict) or not result.get("completed") or result.get("failed") \
                or result.get("interrupted"):
            return False
        if turn is not None and turn.errors:
            return False
        return bool(self.success(result)) if self.success is not None else True
