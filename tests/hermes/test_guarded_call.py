"""``SkillGuard.call`` with a stand-in agent: the served version, the outcome, the user's
exception (the full agent runs in test_e2e.py)."""

import pytest

from .conftest import SKILL_V1


class StubAgent:
    """Records the message it got and returns a Hermes-shaped result (or raises)."""

    def __init__(self, result=None, error=None):
        self.session_id = "stub-session"
        self.result, self.error, self.messages = result, error, []

    def run_conversation(self, message):
        self.messages.append(message)
        if self.error is not None:
            raise self.error
        return self.result


def test_a_canary_serves_each_arm_its_own_skill_version(home, guard):
    from sil_core import RolloutPolicy
    from sil_hermes import SkillConfigAdapter, SkillGuard

    adapter = SkillConfigAdapter()
    skills = SkillGuard(guard, adapter=adapter)
    v2 = SKILL_V1.replace("one short sentence", "a haiku")
    change = guard.propose("hermes:demo-skill", {"files": {**adapter.get_config("demo-skill")["files"], "SKILL.md": v2}},
                           adapter=adapter, mode="canary", policy=RolloutPolicy(ramp=(0.5,), observe_only=True))
    assert change.state in ("canary", "switched")
    served = {}
    for key in range(40):
        agent = StubAgent({"completed": True, "final_response": "ok"})
        skills.call("demo-skill", "go", agent_factory=lambda: agent, key=key)
        served["candidate" if "a haiku" in agent.messages[0] else "baseline"] = True
        assert "Answer in" in agent.messages[0] and agent.messages[0].rstrip().endswith("go")
    assert served == {"candidate": True, "baseline": True}
    assert (home / "skills" / "demo-skill" / "SKILL.md").read_text() == SKILL_V1  # the disk keeps the baseline
    guard.flush()
    arms = {r.arm for r in guard.store.read_calls("hermes:demo-skill", limit=100)}
    assert arms == {"baseline", "candidate"}


def test_outcomes_and_the_users_exception(home, guard):
    from sil_hermes import SkillGuard

    skills = SkillGuard(guard, success=lambda r: r["final_response"] != "I cannot")
    skills.call("demo-skill", "a", agent_factory=lambda: StubAgent({"completed": True, "final_response": "fine"}))
    skills.call("demo-skill", "b", agent_factory=lambda: StubAgent({"completed": False, "final_response": ""}))
    skills.call("demo-skill", "c", agent_factory=lambda: StubAgent({"completed": True, "final_response": "I cannot"}))
    boom = RuntimeError("provider down")
    with pytest.raises(RuntimeError) as raised:
        skills.call("demo-skill", "d", agent_factory=lambda: StubAgent(error=boom))
    assert raised.value is boom
    with pytest.raises(LookupError):
        skills.call("no-such-skill", "e", agent_factory=lambda: StubAgent({"completed": True}))
    guard.flush()
    stats = guard.stats("hermes:demo-skill")
    assert (stats.successes, stats.failures) == (1, 3)
