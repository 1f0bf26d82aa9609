"""A turn's token usage (Hermes' post_api_request) and its price land on the records of the
skill versions it loaded: real AIAgent turns against the fake model, known truth."""

import pytest

from ._fake_llm import FakeLLM, records
from .test_e2e import PATCH, TARGET, agent_factory


def script(phase):
    """Load the skill, then answer; v2 answers at three times the completion tokens."""

    def replies(messages):
        tools = [m for m in messages if m.get("role") == "tool"]
        if not tools:
            return {"tool_calls": [("skill_view", {"name": "demo-skill"})], "usage": (100, 7)}
        return {"content": "OK", "usage": (130, 60 if phase["v2"] else 20)}

    return replies


def test_turn_tokens_and_cost_per_version_equal_what_the_model_reported(home, tmp_path):
    from model_tools import handle_function_call
    from sil_core import Guard, RolloutPolicy, config_version
    from sil_hermes import SkillConfigAdapter, SkillGuard
    from sil_hermes.plugin import drain

    config = home / "config.yaml"
    config.write_text(config.read_text() + "sil:\n  prices: {fake-model: [1.0, 4.0]}\n")
    # a guard that only records here (the candidate's tripled tokens would roll it back otherwise)
    guard = Guard(f"sqlite:///{tmp_path / 'sil.db'}", flush_interval=0.05, policy=RolloutPolicy(min_calls=1000))
    skills = SkillGuard(guard, adapter=SkillConfigAdapter())
    phase = {"v2": False}
    with FakeLLM(script(phase)) as fake:
        make = agent_factory(fake)
        for _ in range(4):
            make().run_conversation("what is the demo?")  # the plugin records each turn
        drain()
        v1 = config_version(skills.adapter.get_config("demo-skill"))
        handle_function_call("skill_manage", PATCH)
        drain()
        phase["v2"] = True
        for _ in range(3):
            skills.call("demo-skill", "what is the demo?", agent_factory=make)  # SkillGuard records these
        for _ in range(3):
            make().run_conversation("what is the demo?")
        drain()
    guard.flush()
    v2 = guard.change(TARGET).candidate_version
    rows = records(guard, TARGET)
    # two requests a turn: tokens in 100 + 130, out 7 + 20 (v1) or 7 + 60 (v2); prices 1 and 4 USD per million
    before = [r for r in rows if r.context.get("content_version") == v1]
    assert len(before) == 4  # before the first change: unversioned records of v1's content
    assert all(r.metrics == {"tokens_in": 230, "tokens_out": 27, "cost_usd": pytest.approx(338e-6)} for r in before)
    stats = guard.stats(TARGET, version=v2)  # 3 SkillGuard calls and 3 plugin turns
    assert stats.n == 6 and stats.metrics["tokens_in"].n == 6
    assert stats.metrics["tokens_in"].mean == 230 and stats.metrics["tokens_out"].mean == 67
    assert stats.metrics["cost_usd"].mean == pytest.approx((230 * 1.0 + 67 * 4.0) / 1e6)
    guard.close()
