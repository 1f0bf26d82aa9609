"""One store for the plugin, ``SkillGuard``, ``sil status`` and ``sil hermes``: with
``$HERMES_HOME`` set and no ``$SIL_STORE``, all of them read and write
``$HERMES_HOME/sil/sil.db``. A skill Hermes does not have records nothing."""

import logging

import pytest

from .conftest import SKILL_V1
from .test_guarded_call import StubAgent

TARGET = "hermes:demo-skill"


@pytest.fixture
def no_env(tmp_path, monkeypatch):
    monkeypatch.delenv("SIL_STORE", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))


def test_plugin_skillguard_sil_status_and_sil_hermes_share_one_store(home, no_env, tmp_path, capsys):
    from sil_core import Guard
    from sil_core.cli import main
    from sil_hermes import SkillConfigAdapter, SkillGuard, plugin
    from sil_hermes._runtime import runtime

    db = home / "sil" / "sil.db"
    # the plugin records a turn that loaded the skill
    plugin.post_tool_call(tool_name="skill_view", args={"name": "demo-skill"}, status="ok", session_id="s1")
    plugin.on_session_end(session_id="s1", completed=True, interrupted=False)
    runtime().drain(10)
    runtime().guard.flush()
    assert runtime().guard.store.url == f"sqlite:///{db}"
    # a script: SkillGuard on Guard() (the core's default store) records a turn and an edit
    with Guard() as guard:
        skills = SkillGuard(guard)
        skills.call("demo-skill", "go", agent_factory=lambda: StubAgent({"completed": True, "final_response": "ok"}))
        v2 = SKILL_V1.replace("one short sentence", "a haiku")
        files = {**SkillConfigAdapter().get_config("demo-skill")["files"], "SKILL.md": v2}
        change = guard.propose(TARGET, {"files": files}, adapter=SkillConfigAdapter(), mode="switch")
        assert change.in_flight
    assert not (tmp_path / "xdg" / "sil-guard").exists()
    capsys.readouterr()
    assert main(["status"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == f"store: sqlite:///{db} (from $HERMES_HOME)"
    assert f"{TARGET}: 2 calls" in out
    assert main(["hermes", "history", "demo-skill"]) == 0
    rows = capsys.readouterr().out.splitlines()[1:]
    assert [r.split()[0] for r in rows] == [change.baseline_version, change.candidate_version]
    assert rows[-1].split()[-1] == "active"


def test_skillguard_without_a_guard_uses_the_plugins_guard(home, no_env):
    from sil_hermes import SkillGuard
    from sil_hermes._runtime import runtime

    skills = SkillGuard()
    assert skills.guard is runtime().guard
    assert skills.guard.store.url == f"sqlite:///{home / 'sil' / 'sil.db'}"


def test_skillguard_on_the_xdg_store_warns_that_hermes_reads_another(tmp_path, monkeypatch, no_env, caplog):
    from sil_core import Guard
    from sil_hermes import SkillConfigAdapter, SkillGuard

    monkeypatch.delenv("HERMES_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    hermes = tmp_path / "user" / ".hermes"
    (hermes / "skills").mkdir(parents=True)
    with caplog.at_level(logging.WARNING, logger="sil_hermes"), Guard() as guard:
        SkillGuard(guard, adapter=SkillConfigAdapter(hermes))
    assert guard.store.url == f"sqlite:///{tmp_path / 'xdg' / 'sil-guard' / 'sil.db'}"
    assert f"sqlite:///{hermes / 'sil' / 'sil.db'}" in caplog.text and "SkillGuard()" in caplog.text


def test_an_unknown_skill_raises_and_records_nothing(home, guard):
    from sil_hermes import SkillGuard

    skills = SkillGuard(guard)
    built = []
    with pytest.raises(LookupError, match="no skill 'demo-skil'"):
        skills.call("demo-skil", "go", agent_factory=lambda: built.append(1) or StubAgent({"completed": True}))
    guard.flush()
    assert built == []  # no agent was built
    assert "hermes:demo-skil" not in guard.store.targets()
    assert guard.stats("hermes:demo-skil").n == 0
