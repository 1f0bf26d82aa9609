"""End to end: a real ``AIAgent`` against a fake OpenAI-compatible server on 127.0.0.1.

v1 serves; the skill is edited through the real ``skill_manage`` path (the plugin turns
the write into a guarded change); v2 turns fail (or get slower); the guard detects it and
rolls back; SKILL.md and config.yaml are byte-identical to v1 and the trail verifies.
"""

import pytest

from ._fake_llm import FakeLLM, skill_script
from .conftest import CONFIG_V1, SKILL_V1

PATCH = {"action": "patch", "name": "demo-skill", "old_string": "Answer in one short sentence.",
         "new_string": "Answer in three long paragraphs."}
TARGET = "hermes:demo-skill"


def agent_factory(fake):
    from run_agent import AIAgent

    return lambda: AIAgent(base_url=fake.base_url, api_key="sk-fake", model="fake-model", provider="custom",
                           enabled_toolsets=["skills"], quiet_mode=True, skip_context_files=True, skip_memory=True,
                           max_iterations=6, tool_delay=0.0)


def run_story(home, guard, *, v2_fails: bool, v1_calls: int, v2_calls: int, delay_s: float = 0.25):
    from model_tools import handle_function_call
    from sil_hermes import SkillConfigAdapter, SkillGuard
    from sil_hermes.plugin import drain

    phase = {"v2": False}
    skills = SkillGuard(guard, adapter=SkillConfigAdapter())
    with FakeLLM(skill_script(lambda: phase["v2"] and v2_fails)) as fake:
        make = agent_factory(fake)
        for _ in range(v1_calls):
            result = skills.call("demo-skill", "what is the demo?", agent_factory=make)
            assert result["final_response"] == "OK"
        handle_function_call("skill_manage", PATCH)  # the real write path; the plugin snapshots v1
        drain()
        change = guard.change(TARGET)
        assert change is not None and change.state in ("canary", "switched")
        phase["v2"] = True
        if not v2_fails:
            fake.delay_s = delay_s
        for _ in range(v2_calls):
            skills.call("demo-skill", "what is the demo?", agent_factory=make)
            guard.drain()
            if guard.change(TARGET).state not in ("canary", "switched"):
                break
        guard.evaluate(TARGET)
    return guard.change(TARGET)


def assert_v1_restored(home, guard):
    from model_tools import handle_function_call
    import json

    assert (home / "skills" / "demo-skill" / "SKILL.md").read_bytes() == SKILL_V1.encode()
    assert (home / "config.yaml").read_bytes() == CONFIG_V1.encode()
    view = json.loads(handle_function_call("skill_view", {"name": "demo-skill"}))
    assert "one short sentence" in view["content"]
    assert guard.verify_trail().ok
    types = [e["type"] for e in guard.trail(TARGET)]
    assert types[-2:] == ["rollback_started", "rollback_succeeded"]


def test_v2_fails_and_is_rolled_back(home, guard):
    change = run_story(home, guard, v2_fails=True, v1_calls=4, v2_calls=6)
    assert change.state == "rolled_back"
    stats_v1 = guard.stats(TARGET, version=change.baseline_version)
    stats_v2 = guard.stats(TARGET, version=change.candidate_version)
    assert stats_v2.failures >= 3 and stats_v2.successes == 0
    assert guard.stats(TARGET).successes >= 4 and stats_v1.failures == 0
    assert_v1_restored(home, guard)


def test_v2_gets_slower_and_is_rolled_back(home, guard):
    # a turn takes 0.4-0.7 s here (the first one ~2 s); v2 adds 0.5 s to each of its two
    # model calls. The latency test's confidence sequence is tuned for ~8 calls per arm
    # (cs_tuning_n), as a deployment expecting few, slow calls would tune it.
    guard.policy = guard.policy.override(cs_tuning_n=8)
    change = run_story(home, guard, v2_fails=False, v1_calls=8, v2_calls=16, delay_s=0.5)
    assert change.state == "rolled_back"
    assert "latency" in (change.reason or "") or "slow" in (change.reason or "")
    assert guard.stats(TARGET, version=change.candidate_version).failures == 0
    assert_v1_restored(home, guard)
