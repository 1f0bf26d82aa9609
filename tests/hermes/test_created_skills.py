"""A skill the agent created is its first version, and the baseline of its later edits:
end to end with a real ``AIAgent`` (fake model on 127.0.0.1), the real ``skill_manage``
and the plugin as Hermes loads it."""

from ._fake_llm import FakeLLM
from .test_e2e import agent_factory

TARGET = "hermes:fresh-skill"
CREATED = "---\nname: fresh-skill\ndescription: Answer questions about fresh things.\n---\n# Fresh\n\nAnswer briefly.\n"
BAD_PATCH = {"action": "patch", "name": "fresh-skill", "old_string": "Answer briefly.",
             "new_string": "Answer with a reference file that does not exist."}


def script(phase):
    """``create``/``patch``: the model calls ``skill_manage``; ``good``/``bad``: it loads the
    skill (``bad``: then calls a tool that fails) and answers."""

    def replies(messages):
        results = [m for m in messages if m.get("role") == "tool"]
        if phase["now"] == "create":
            return {"content": "created"} if results else \
                {"tool_calls": [("skill_manage", {"action": "create", "name": "fresh-skill", "content": CREATED})]}
        if phase["now"] == "patch":
            return {"content": "patched"} if results else {"tool_calls": [("skill_manage", BAD_PATCH)]}
        if not results:
            return {"tool_calls": [("skill_view", {"name": "fresh-skill"})]}
        if phase["now"] == "bad" and len(results) == 1:
            return {"tool_calls": [("skill_view", {"name": "missing-reference"})]}
        return {"content": "FAILED" if phase["now"] == "bad" else "OK"}

    return replies


def test_a_created_skill_is_the_baseline_of_its_edits(home, guard):
    from sil_core import config_version
    from sil_core.cli import main
    from sil_core.integration import State
    from sil_hermes import SkillConfigAdapter, SkillGuard

    import sil_hermes._runtime as rt_mod

    SkillGuard(guard, adapter=SkillConfigAdapter())  # the plugin's hooks record on this guard
    rt = rt_mod._runtime
    skill_md = home / "skills" / "fresh-skill" / "SKILL.md"
    phase = {"now": "create"}

    def turn(make):
        result = make().run_conversation("help me with something fresh")
        rt.drain()
        guard.drain()
        return result

    with FakeLLM(script(phase)) as fake:
        make = agent_factory(fake)
        turn(make)
        assert skill_md.read_text() == CREATED
        created = config_version(rt.adapter.get_config("fresh-skill"))
        assert guard.change(TARGET) is None  # not a change: the skill's first version
        assert guard.view(TARGET, fresh=True).active == created

        phase["now"] = "good"
        for _ in range(6):
            assert turn(make)["final_response"] == "OK"
        phase["now"] = "patch"
        turn(make)
        change = guard.change(TARGET)
        assert change.state == State.SWITCHED and change.baseline_version == created
        assert "does not exist" in skill_md.read_text()

        phase["now"] = "bad"
        failing = 0
        while guard.change(TARGET).state == State.SWITCHED and failing < 5:
            turn(make)
            failing += 1
        change = guard.change(TARGET)
    print(f"rolled back after {failing} failing turns")

    assert change.state == State.ROLLED_BACK, f"still {change.state} after {failing} failing turns"
    assert failing <= 5
    assert skill_md.read_bytes() == CREATED.encode()  # the created version, byte for byte
    assert guard.view(TARGET, fresh=True).active == created
    stats = guard.stats(TARGET, version=created)
    assert stats.successes >= 6 and stats.failures == 0
    assert main(["hermes", "rollback", "fresh-skill", "--store", guard.store.url]) == 0  # nothing deletes it
    assert skill_md.read_bytes() == CREATED.encode()
    assert guard.verify_trail().ok
