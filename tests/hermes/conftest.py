"""Hermes fixtures: a HERMES_HOME per test with a demo skill (v1), the plugin loaded once
through its real entry point, and a fresh plugin state per test."""

import os
import textwrap

import pytest

SKILL_V1 = textwrap.dedent("""\
    ---
    name: demo-skill
    description: Answer questions about the demo project.
    version: 1.0.0
    metadata:
      hermes:
        config:
          - key: demo.style
            description: How to answer
            default: terse
    ---
    # Demo skill

    Answer in one short sentence.
    """)
CONFIG_V1 = textwrap.dedent("""\
    # Hermes config for the sil-guard tests (this comment must survive a restore)
    plugins:
      enabled: [sil]
    skills:
      creation_nudge_interval: 0   # no background review thread
      config:
        demo:
          style:   terse
    """)


def write_home(home):
    (home / "skills" / "demo-skill" / "references").mkdir(parents=True)
    (home / "skills" / "demo-skill" / "SKILL.md").write_text(SKILL_V1)
    (home / "skills" / "demo-skill" / "references" / "faq.md").write_bytes(b"Q: what? A: that.\n")
    (home / "config.yaml").write_text(CONFIG_V1)


@pytest.fixture(scope="session")
def plugin_manager():
    """Hermes' plugin manager with the ``sil`` plugin discovered through its entry point."""
    import tempfile
    from pathlib import Path

    home = Path(tempfile.mkdtemp(prefix="sil-hermes-discovery-"))
    write_home(home)
    old = os.environ.get("HERMES_HOME")
    os.environ["HERMES_HOME"] = str(home)
    for var in [v for v in os.environ if v.endswith("_API_KEY") or v in ("OPENAI_BASE_URL", "HERMES_SAFE_MODE")]:
        os.environ.pop(var)
    try:
        import model_tools  # noqa: F401  (imports tools, discovers plugins)
        from hermes_cli.plugins import discover_plugins, get_plugin_manager

        discover_plugins(force=True)
        return get_plugin_manager()
    finally:
        if old is not None:
            os.environ["HERMES_HOME"] = old
        else:
            os.environ.pop("HERMES_HOME", None)


@pytest.fixture
def home(tmp_path, monkeypatch, plugin_manager):
    """A fresh HERMES_HOME with demo-skill v1, and a fresh plugin state."""
    from agent.prompt_builder import clear_skills_system_prompt_cache
    from agent.skill_commands import scan_skill_commands

    import sil_hermes._runtime as rt

    home = tmp_path / "home"
    write_home(home)
    monkeypatch.setenv("HERMES_HOME", str(home))
    clear_skills_system_prompt_cache(clear_snapshot=False)
    scan_skill_commands()
    fresh = rt.Runtime()
    monkeypatch.setattr(rt, "_runtime", fresh)
    yield home
    fresh.drain(10)


@pytest.fixture
def guard(tmp_path):
    """A guard with a small sample size, so a test needs few turns."""
    from sil_core import Guard, RolloutPolicy

    g = Guard(f"sqlite:///{tmp_path / 'sil.db'}", flush_interval=0.05, refresh_interval=0.05,
              policy=RolloutPolicy(min_calls=4, tripwire_consecutive=3, step_calls=4))
    yield g
    g.close()
