"""Skills preloaded for a session (``hermes chat -s skill``) are loads of every turn: Hermes
puts them in the agent's ephemeral system prompt, which the plugin reads in
``pre_api_request`` (no other hook sees the system prompt). The version recorded is the
one the session's prompt holds, even after the skill changed on disk."""

import os
import subprocess
import sys

from ._fake_llm import FakeLLM, records, turn_results
from .test_e2e import PATCH, TARGET


def answer_after_one_tool(messages):
    """Two model calls per turn (a ``skills_list``, then the answer): one load all the same."""
    return {"content": "OK"} if turn_results(messages) else {"tool_calls": [("skills_list", {})]}


def test_a_preloaded_skill_is_a_load_of_each_turn_of_the_version_the_session_holds(home, guard):
    from agent.skill_commands import build_preloaded_skills_prompt
    from model_tools import handle_function_call
    from run_agent import AIAgent
    from sil_core import config_version
    from sil_hermes import SkillConfigAdapter, SkillGuard

    import sil_hermes._runtime as rt_mod

    SkillGuard(guard, adapter=SkillConfigAdapter())
    rt = rt_mod._runtime
    v1 = config_version(rt.adapter.get_config("demo-skill"))
    prompt, loaded, _ = build_preloaded_skills_prompt(["demo-skill"])  # what `hermes chat -s demo-skill` does
    assert loaded == ["demo-skill"]
    with FakeLLM(answer_after_one_tool) as fake:
        agent = AIAgent(base_url=fake.base_url, api_key="sk-fake", model="fake-model", provider="custom",
                        enabled_toolsets=["skills"], quiet_mode=True, skip_context_files=True, skip_memory=True,
                        max_iterations=6, tool_delay=0.0, ephemeral_system_prompt=prompt)
        first = agent.run_conversation("hello")
        rt.drain()
        handle_function_call("skill_manage", PATCH)  # v2 on disk; this session's prompt still holds v1
        rt.drain()
        second = agent.run_conversation("again", conversation_history=first["messages"])
        rt.drain()
        assert len(fake.requests) == 4
    rows = records(guard, TARGET)
    assert [(r.outcome, r.context["source"], r.context["content_version"]) for r in rows] == \
        [("ok", "preloaded", v1), ("ok", "preloaded", v1)]
    assert second["completed"] and guard.change(TARGET).candidate_version != v1


def test_hermes_chat_s_counts_the_skill_and_q_slash_loads_nothing(home, tmp_path):
    """The real CLI, one process per run. ``-q "/demo-skill ..."`` is sent to the model
    as typed (Hermes 0.19 expands slash commands only in the interactive loop), so no
    skill content reached the model and no load is recorded."""
    from sil_core import Guard

    store = f"sqlite:///{tmp_path / 'cli.db'}"
    with FakeLLM(lambda messages: {"content": "OK"}) as fake:
        config = home / "config.yaml"
        config.write_text(config.read_text() + f"model:\n  default: fake-model\n  provider: custom\n"
                                               f"  base_url: {fake.base_url}\n  api_key: sk-fake\ntoolsets: [skills]\n")
        env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
        env.update(HERMES_HOME=str(home), SIL_STORE=store)
        for args in (["-s", "demo-skill", "-q", "hello"], ["-q", "/demo-skill what is it"]):
            out = subprocess.run([sys.executable, "-m", "hermes_cli.main", "chat", *args, "-Q"], env=env,
                                 capture_output=True, text=True, timeout=120)
            assert out.returncode == 0 and "OK" in out.stdout, out.stderr[-2000:]
        users = [m["content"] for r in fake.requests for m in r["messages"] if m["role"] == "user"]
        assert users == ["hello", "/demo-skill what is it"]
    guard = Guard(store, worker_id="test")
    try:
        rows = records(guard, TARGET)
    finally:
        guard.close()
    assert [(r.outcome, r.context["source"]) for r in rows] == [("ok", "preloaded")]
