"""The Hermes plugin (entry point ``hermes_agent.plugins``: ``sil = sil_hermes.plugin``).

``register(ctx)`` wires seven hooks. Each accepts ``**kwargs``, never raises (an error is
reported through ``sil_core.integration.report`` and the tool call goes on), is
thread-safe and queues its bookkeeping to a background worker:

* ``pre_tool_call``: snapshots a skill before a ``skill_manage`` write lands; blocks a
  ``skill_view`` of a quarantined (rolled-back) version, and a ``skill_manage`` write of
  a pinned skill or one that would bring a quarantined version back, with a message to
  the model.
* ``post_tool_call``: records skill loads (status, duration), turns a ``skill_manage``
  write into a guarded change (writer: foreground or background review; a created skill
  becomes its first version; an edit while a change is in flight supersedes it; an edit
  the guard refuses is undone on disk), notes tool errors of the turn (charged to a
  skill only when they follow from it: see ``sil_hermes._runtime``).
* ``transform_tool_result``: on the first ``skill_view`` of a skill after its rollback
  (once per rollback and process), adds a short ``sil_guard`` notice to the result: the
  version restored and why, so the model does not make the same edit again.
* ``pre_llm_call``: counts slash-command skill invocations as loads.
* ``pre_api_request``: counts skills preloaded into the system prompt (``hermes chat -s``)
  as loads of the turn (no other hook sees the system prompt).
* ``post_api_request``: adds each model request's token usage to the turn (and its cost,
  priced with ``sil.prices``: no hook sees Hermes' own cost estimate).
* ``on_session_end``: closes the turn and records its outcome, tokens and cost against
  every skill version it loaded (``hermes -z``: then drains, as it exits past atexit).

Hermes' background review fork shares the foreground's ``session_id``; in it, only the
``skill_manage`` writes are recorded (as changes by ``background_review``): its reads are
not uses, its tool errors and its turn end are not the foreground turn's.
"""

import json
import sys
from typing import Any, Optional

from sil_core.integration import report

from ._runtime import PRELOADED_MARK, in_review, runtime
from .skills import skill_of

__all__ = ("drain", "on_session_end", "post_api_request", "post_tool_call", "pre_api_request",
           "pre_llm_call", "pre_tool_call", "register", "transform_tool_result")

_SKILL_TOOLS = ("skill_view", "skill_manage")


def pre_tool_call(tool_name: str = "", args: Any = None, tool_call_id: Optional[str] = None, **_: Any) -> Optional[dict]:
    """Snapshot before ``skill_manage``; block a quarantined skill version."""
    if tool_name not in _SKILL_TOOLS:
        return None
    try:
        rt = runtime()
        name = _skill_arg(args)
        if not name:
            return None
        if tool_name == "skill_view":
            reason = rt.block_reason(name)
            if reason is not None:
                return {"action": "block", "message": (
                    f"sil-guard: skill '{name}' (version {rt.current.get(name)}) is quarantined because it "
                    f"regressed ({reason}). Do not load or follow it; carry on without this skill.")}
            return None
        if rt.pinned(name):
            return {"action": "block", "message": (
                f"sil-guard: skill '{name}' is pinned to a reviewed version; it cannot be edited now. "
                "Carry on without changing it.")}
        refused = rt.snapshot(tool_call_id, name, args)
        if refused is not None:
            return {"action": "block", "message": (
                f"sil-guard: this edit of skill '{name}' would bring back {refused}, which was rolled back "
                "because it regressed. It was not written; keep the current version of the skill.")}
    except Exception as exc:
        report("hermes.pre_tool_call", exc)
    return None


def post_tool_call(tool_name: str = "", args: Any = None, status: str = "", duration_ms: Any = 0,
                   session_id: Optional[str] = None, tool_call_id: Optional[str] = None,
                   error_message: Optional[str] = None, **_: Any) -> None:
    """Record a skill load, a skill write, or a tool error of the turn (in the background
    review: only a skill write)."""
    try:
        rt = runtime()
        name = _skill_arg(args) if tool_name in _SKILL_TOOLS else ""
        if tool_name == "skill_manage" and name:
            rt.edited(tool_call_id, name, status, str((args or {}).get("action") or ""), session_id)
        if in_review():
            return
        if tool_name == "skill_view" and status == "ok" and not (args or {}).get("file_path"):
            if name:
                rt.loaded(session_id, name, "skill_view", int(duration_ms or 0))
                return
        elif tool_name == "skill_view" and status == "blocked":
            if name and rt.block_reason(name) is not None:
                rt.blocked_load(session_id, name)
        if status == "error":
            rt.tool_error(session_id, tool_name, error_message, name if tool_name == "skill_view" else "")
    except Exception as exc:
        report("hermes.post_tool_call", exc)


def transform_tool_result(tool_name: str = "", args: Any = None, result: Any = None, status: str = "",
                          **_: Any) -> Optional[str]:
    """Tell the model, once per rollback, that the skill it just loaded was rolled back."""
    if tool_name != "skill_view" or status != "ok" or not isinstance(result, str) or in_review():
        return None  # the review is not who must be told (it would use the notice up)
    try:
        name = _skill_arg(args)
        if not name or (args or {}).get("file_path"):
            return None
        rt = runtime()
        if name not in rt.rolled:
            return None
        try:
            body = json.loads(result)
        except ValueError:
            body = None
        note = rt.notice(name)
        if note is None:
            return None
        if isinstance(body, dict):
            return json.dumps({"sil_guard": note, **body}, ensure_ascii=False)
        return f"{note}\n\n{result}"
    except Exception as exc:
        report("hermes.transform_tool_result", exc)
    return None


def pre_llm_call(user_message: Any = None, session_id: Optional[str] = None, **_: Any) -> None:
    """Count the skills a ``/skill`` slash command loaded into this turn."""
    try:
        if isinstance(user_message, str) and ('invoked the "' in user_message[:300]
                                              or "[Loaded as part of the " in user_message) and not in_review():
            runtime().slash_loads(session_id, user_message)
    except Exception as exc:
        report("hermes.pre_llm_call", exc)
    return None


def pre_api_request(request_messages: Any = None, session_id: Optional[str] = None, **_: Any) -> None:
    """Count the skills preloaded into the session's system prompt (``-s``) as loads of this turn."""
    try:
        first = request_messages[0] if isinstance(request_messages, list) and request_messages else None
        system = first.get("content") if isinstance(first, dict) and first.get("role") == "system" else None
        if isinstance(system, str) and PRELOADED_MARK in system and not in_review():
            runtime().preloaded_loads(session_id, system)
    except Exception as exc:
        report("hermes.pre_api_request", exc)
    return None


def post_api_request(session_id: Optional[str] = None, model: Any = None, usage: Any = None, **_: Any) -> None:
    """Add a model request's token usage (and its price from ``sil.prices``) to the turn."""
    try:
        if usage and not in_review():
            runtime().usage(session_id, model, usage)
    except Exception as exc:
        report("hermes.post_api_request", exc)
    return None


def on_session_end(session_id: Optional[str] = None, completed: Any = None, interrupted: Any = None,
                   **_: Any) -> None:
    """Close the turn: its outcome goes to every skill version it loaded (not the
    background review's turn end: it shares the foreground's session id)."""
    try:
        if not in_review():
            rt = runtime()
            rt.end(session_id, completed, interrupted)
            if _oneshot():  # `hermes -z` leaves with os._exit, past atexit: drain now (bounded)
                rt.at_exit()
    except Exception as exc:
        report("hermes.on_session_end", exc)


def _oneshot() -> bool:
    """Whether this process runs ``hermes -z`` (it ends with ``os._exit``, skipping atexit)."""
    return "hermes_cli.oneshot" in sys.modules


DESCRIPTION = "Versions and rollback for Hermes skills: every skill edit becomes a guarded change (sil-guard)"


def register(ctx: Any) -> None:
    """Hermes' plugin entry point: describe the plugin (an entry point has no manifest
    file, so Hermes would show an empty description) and register the hooks."""
    manifest = getattr(ctx, "manifest", None)
    if manifest is not None and not getattr(manifest, "description", None):
        try:
            manifest.description = DESCRIPTION
        except Exception as exc:  # a frozen manifest in another Hermes: keep its own
            report("hermes.register", exc)
    for name, fn in (("pre_tool_call", pre_tool_call), ("post_tool_call", post_tool_call),
                     ("transform_tool_result", transform_tool_result), ("pre_llm_call", pre_llm_call),
                     ("pre_api_request", pre_api_request), ("post_api_request", post_api_request),
                     ("on_session_end", on_session_end)):
        ctx.register_hook(name, fn)


def drain(timeout: Optional[float] = 10.0) -> bool:
    """Wait until the plugin's queued bookkeeping is done (tests, scripts, shutdown)."""
    return runtime().drain(timeout)


def _skill_arg(args: Any) -> str:
    name = args.get("name") if isinstance(args, dict) else None
    return skill_of(str(name)) if name else ""
