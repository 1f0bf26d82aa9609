"""Hermes Agent, imported on first use (the package supports hermes-agent >= 0.18).

Importing this module imports nothing from Hermes. :func:`require` checks that Hermes is
installed without importing it (``import model_tools`` costs ~0.7 s and creates the
``$HERMES_HOME`` tree); the other helpers import the light Hermes modules they need when
called and fail open where Hermes' API drifted.
"""

import importlib.util
import os
from pathlib import Path
from typing import Optional

from sil_core.integration import fail_open
from sil_core.errors import MissingExtra

__all__ = ("clear_skill_caches", "hermes_home", "require", "write_origin")

#: the one identifier: module name suffix, pip extra, trail actor prefix, target prefix
NAME = "hermes"
#: Hermes' write origin inside its background review fork (any other origin is the foreground)
BACKGROUND = "background_review"
#: Hermes' disk cache of the system prompt's skill index, in its home (0.19.0)
SNAPSHOT_NAME = ".skills_prompt_snapshot.json"
#: the marker Hermes puts at the start of a slash-command skill invocation
SKILL_INVOCATION_PREFIX = "[IMPORTANT: The user has invoked the "


def require() -> None:
    """Raise :class:`MissingExtra` naming the ``hermes`` extra when Hermes is not installed."""
    try:
        found = all(importlib.util.find_spec(m) is not None for m in ("hermes_constants", "model_tools"))
    except (ImportError, ValueError):
        found = False
    if not found:
        raise MissingExtra(NAME, "hermes-agent")


def hermes_home() -> Path:
    """Hermes' home folder as Hermes resolves it now (override, ``$HERMES_HOME``, ``~/.hermes``)."""
    try:
        from hermes_constants import get_hermes_home

        return Path(get_hermes_home())
    except ImportError:
        return Path(os.environ.get("HERMES_HOME") or Path.home() / ".hermes")


def write_origin() -> str:
    """Hermes' skill write origin here: ``"background_review"`` inside its background
    review fork, else the foreground's (``"foreground"``, ``"assistant_tool"``...)."""
    try:
        from tools.skill_provenance import get_current_write_origin

        return str(get_current_write_origin() or "foreground")
    except Exception:  # an older or newer Hermes without the provenance module
        return "foreground"


def clear_skill_caches(home: Optional[Path] = None) -> None:
    """Drop Hermes' skill prompt caches (in process, and the disk snapshot of ``home``,
    by default Hermes' own), as ``skill_manage`` does after a write."""
    with fail_open("hermes.clear_caches"):
        from agent.prompt_builder import clear_skills_system_prompt_cache

        own = home is None or Path(home).resolve() == hermes_home().resolve()
        clear_skills_system_prompt_cache(clear_snapshot=own)
        if not own:  # an adapter on another home: its snapshot, not the running Hermes' one
            (Path(home) / SNAPSHOT_NAME).unlink(missing_ok=True)


def skill_message(skill: str, task: str, content: Optional[str], skill_dir: Optional[Path]) -> Optional[str]:
    """The user message of ``/skill task``: from disk, or from ``content`` (a served
    version's SKILL.md) when given; ``None`` when the skill does not exist."""
    from agent import skill_commands as sc

    if content is None:
        return sc.build_skill_invocation_message(f"/{skill}", task)
    note = (f'[IMPORTANT: The user has invoked the "{skill}" skill, indicating they want '
            "you to follow its instructions. The full skill content is loaded below.]")
    build = getattr(sc, "_build_skill_message", None)
    if build is not None:
        with fail_open("hermes.skill_message"):
            return build({"content": content, "name": skill}, skill_dir, note, user_instruction=task)
    return f"{note}\n\n{content.strip()}\n\n{task}".rstrip()
