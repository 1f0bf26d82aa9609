"""The ``sil:`` section of Hermes' ``config.yaml``: it sets the guard's store, policy,
mode and notifiers; a bad value names the key and what it accepts. ``SkillGuard()`` and
``sil hermes`` stop with that message; the plugin says it once and keeps Hermes running."""

import logging
import time

import pytest

from .conftest import CONFIG_V1, SKILL_V1
from .test_guarded_call import StubAgent

TARGET = "hermes:demo-skill"


@pytest.fixture(autouse=True)
def no_store_env(monkeypatch, tmp_path):
    monkeypatch.delenv("SIL_STORE", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))


def _configure(home, section: str) -> None:
    (home / "config.yaml").write_text(CONFIG_V1 + section)


def test_a_tripwire_of_3_rolls_an_edit_back_after_3_failing_turns(home):
    from sil_core.integration import State
    from sil_hermes import SkillConfigAdapter, SkillGuard

    _configure(home, "sil:\n  tripwire_consecutive: 3\n  min_calls: 40\n")
    skills = SkillGuard()
    adapter = SkillConfigAdapter()
    guard = skills.guard
    for _ in range(5):
        skills.call("demo-skill", "go", agent_factory=lambda: StubAgent({"completed": True}))
    v2 = SKILL_V1.replace("one short sentence", "three long paragraphs")
    guard.propose(TARGET, {"files": {**adapter.get_config("demo-skill")["files"], "SKILL.md": v2}},
                  adapter=adapter, mode="switch")
    states = []
    for _ in range(3):
        skills.call("demo-skill", "go", agent_factory=lambda: StubAgent({"completed": False}))
        guard.evaluate(TARGET)
        deadline = time.monotonic() + 5  # the guard may be judging it on its own thread as well
        while guard.change(TARGET).state == State.SWITCHED and len(states) == 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        states.append(guard.change(TARGET).state)
    assert states == [State.SWITCHED, State.SWITCHED, State.ROLLED_BACK]
    assert (home / "skills" / "demo-skill" / "SKILL.md").read_text() == SKILL_V1


def test_the_plugin_and_skillguard_get_the_settings(home, monkeypatch):
    from sil_core import LoggingNotifier, WebhookNotifier
    from sil_hermes import SkillGuard
    from sil_hermes._runtime import runtime

    monkeypatch.setenv("SIL_TEST_HOOK", "https://hooks.example.invalid/sil")
    _configure(home, "sil:\n  mode: switch\n  min_calls: 12\n  tripwire_consecutive: 3\n"
                     "  success_tolerance: 0.05\n  latency_tolerance: 0.5\n"
                     "  notifiers:\n    - log\n    - webhook: ${SIL_TEST_HOOK}\n")
    guard = runtime()._guard()  # the plugin's
    assert SkillGuard().guard is guard
    p = guard.policy
    assert (p.min_calls, p.tripwire_consecutive, p.success_tolerance, p.latency_tolerance) == (12, 3, 0.05, 0.5)
    assert guard.mode == "switch"
    assert [type(n) for n in guard.notifiers] == [LoggingNotifier, WebhookNotifier]
    assert guard.notifiers[1].url == "https://hooks.example.invalid/sil"


def test_a_store_setting_is_the_store_of_the_plugin_and_of_sil_status(home, tmp_path, capsys):
    from sil_core.cli import main
    from sil_hermes import SkillGuard

    url = f"sqlite:///{tmp_path / 'team.db'}"
    _configure(home, f"sil:\n  store: {url}\n")
    skills = SkillGuard()
    assert skills.guard.store.url == url
    skills.call("demo-skill", "go", agent_factory=lambda: StubAgent({"completed": True}))
    skills.guard.flush()
    assert main(["status"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == f"store: {url} (from sil.store in {home / 'config.yaml'})"
    assert f"{TARGET}: 1 calls" in out


BAD = [
    ("sil:\n  tripwire: 3\n", ["sil.tripwire", "unknown key", "tripwire_consecutive", "min_calls", "notifiers"]),
    ("sil:\n  tripwire_consecutive: three\n", ["sil.tripwire_consecutive", "an integer >= 1", "'three'"]),
    ("sil:\n  min_calls: 0\n", ["sil.min_calls", "an integer >= 1"]),
    ("sil:\n  mode: blue\n", ["sil.mode", "'canary' or 'switch'", "'blue'"]),
    ("sil:\n  success_tolerance: 5\n", ["sil.success_tolerance", "a number from 0 to 1"]),
    ("sil:\n  latency_tolerance: fast\n", ["sil.latency_tolerance", "a number >= 0"]),
    ("sil:\n  notifiers: [email]\n", ["sil.notifiers", "'log' and {webhook: URL}"]),
    ("sil:\n  store: /tmp/sil.db\n", ["sil.store", "sqlite:///file"]),
    ("sil: {store: 'sqlite:///x.db'}\n", ["sil.store", "block style"]),
    ("sil: [tripwire_consecutive]\n", ["expected a mapping", "tripwire_consecutive"]),
]


@pytest.mark.parametrize("section, words", BAD)
def test_a_bad_value_stops_skillguard_and_sil_hermes_with_a_clear_message(home, capsys, section, words):
    from sil_core import ConfigError
    from sil_core.cli import main
    from sil_hermes import SkillGuard

    _configure(home, section)
    with pytest.raises(ConfigError) as raised:
        SkillGuard()
    assert all(w in str(raised.value) for w in words), str(raised.value)
    assert str(home / "config.yaml") in str(raised.value)
    assert main(["hermes", "history", "demo-skill"]) == 1
    err = capsys.readouterr().err
    assert all(w in err for w in words), err


def test_a_bad_value_is_reported_once_and_the_plugin_runs_with_the_defaults(home, caplog):
    from sil_hermes import plugin
    from sil_hermes._runtime import runtime

    _configure(home, "sil:\n  tripwire_consecutive: three\n")
    with caplog.at_level(logging.WARNING, logger="sil_hermes"):
        for session in ("a", "b"):
            plugin.post_tool_call(tool_name="skill_view", args={"name": "demo-skill"}, status="ok", session_id=session)
            plugin.on_session_end(session_id=session, completed=True, interrupted=False)
        runtime().drain(10)
    guard = runtime().guard
    assert guard.policy.tripwire_consecutive == 5 and guard.store.url == f"sqlite:///{home / 'sil' / 'sil.db'}"
    guard.flush()
    assert guard.stats(TARGET).n == 2  # the turns are still recorded
    warnings = [r.getMessage() for r in caplog.records if "sil.tripwire_consecutive" in r.getMessage()]
    assert len(warnings) == 1 and "default settings" in warnings[0]


def test_hermes_runs_a_turn_with_a_bad_sil_section(home):
    """A real one-shot Hermes process (the plugin loaded through its entry point) with a
    typo in the section: the turn completes and is recorded with the default settings."""
    from sil_core import Guard

    from ._fake_llm import FakeLLM, skill_script
    from .test_one_shot import one_shot

    _configure(home, "sil:\n  tripwire_consecutive: -1\n")
    with FakeLLM(skill_script(lambda: False)) as fake:
        assert one_shot(home, "turn", fake.base_url) == "OK"
    with Guard(f"sqlite:///{home / 'sil' / 'sil.db'}", worker_id="test") as guard:
        assert guard.stats(TARGET).n == 1
    errors = (home / "logs" / "errors.log").read_text()  # where Hermes puts warnings (`hermes logs errors`)
    assert errors.count("sil.tripwire_consecutive") == 1 and "an integer >= 1" in errors
