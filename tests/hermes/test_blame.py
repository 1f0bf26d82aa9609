"""Blame: a skill version's call fails when its turn fails or when a tool error follows
from the skill (a tool its SKILL.md names, a ``skill_view`` of itself, or an error that
appears only under the new version); other tool errors are recorded, not charged."""

import json

from ._fake_llm import FakeLLM, records, turn_results
from .test_e2e import PATCH, TARGET

TOOL_SKILL = "---\nname: tool-skill\ndescription: Read the FAQ.\n---\n# Tool skill\n\nFirst call `read_file` on the FAQ.\n"
MISSING = "/nonexistent/sil-guard-test/faq.md"


def call(tool, args, **kw):
    from model_tools import handle_function_call

    return json.loads(handle_function_call(tool, args, **kw))


def attach(guard):
    from sil_hermes import SkillConfigAdapter, SkillGuard

    import sil_hermes._runtime as rt

    SkillGuard(guard, adapter=SkillConfigAdapter())
    return rt._runtime


def make_agent(fake, toolsets=("skills", "file")):
    from run_agent import AIAgent

    return AIAgent(base_url=fake.base_url, api_key="sk-fake", model="fake-model", provider="custom",
                   enabled_toolsets=list(toolsets), quiet_mode=True, skip_context_files=True, skip_memory=True,
                   max_iterations=6, tool_delay=0.0)


def read_file_turns(phase):
    """Every turn: load demo-skill, call ``read_file`` on a missing file (an error the
    skill has nothing to do with, unless ``phase["bad"]``: the edit told it to), answer."""

    def replies(messages):
        results = turn_results(messages)
        if not results:
            return {"tool_calls": [("skill_view", {"name": "demo-skill"})]}
        if len(results) == 1:
            return {"tool_calls": [("read_file", {"path": MISSING})]}
        return {"content": "OK"}

    return replies


def run(home, guard, patch, turns_before=4, turns_after=12):
    """Turns before and after ``patch`` (through the real skill_manage); the number of
    turns after it until the change left flight, and every turn's true completion."""
    from model_tools import handle_function_call

    rt = attach(guard)
    truth = []
    with FakeLLM(read_file_turns({})) as fake:
        for _ in range(turns_before):
            truth.append(bool(make_agent(fake).run_conversation("what is the demo?")["completed"]))
            rt.drain()
        handle_function_call("skill_manage", patch)
        rt.drain()
        after = 0
        while after < turns_after and guard.change(TARGET).in_flight:
            truth.append(bool(make_agent(fake).run_conversation("what is the demo?")["completed"]))
            after += 1
            rt.drain()
            guard.drain()
    return rt, truth, after


def test_a_harmless_edit_with_a_constant_unrelated_error_is_not_rolled_back(home, guard):
    rt, truth, after = run(home, guard, PATCH)
    change = guard.change(TARGET)
    rows = records(guard, TARGET)
    print(f"after {after} turns: {change.state}; recorded success {sum(r.outcome == 'ok' for r in rows)}/{len(rows)},"
          f" truth {sum(truth)}/{len(truth)}")
    assert change.state != "rolled_back" and after == 12
    assert len(rows) == len(truth) == 16
    assert [r.outcome == "ok" for r in rows] == truth == [True] * 16
    for r in rows:  # the error is kept as its own measure, not charged to the skill
        assert r.context["tool_errors"] == 1 and r.context["error_tools"] == ["read_file"]
        assert r.context["blamed_tools"] == [] and r.error_type is None
    assert {r.context["content_version"] for r in rows[4:]} == {change.candidate_version}


def test_a_bad_edit_that_calls_a_failing_tool_is_rolled_back(home, guard):
    bad = {**PATCH, "new_string": f"First call read_file on {MISSING}; answer from it."}
    rt, truth, after = run(home, guard, bad, turns_before=4, turns_after=8)
    change = guard.change(TARGET)
    rows = records(guard, TARGET)
    print(f"rolled back after {after} turns")
    assert change.state == "rolled_back" and after <= 4
    assert all(truth)  # every turn completed: only the blame makes the new version's turns fail
    assert [r.outcome for r in rows[:4]] == ["ok"] * 4  # v1 does not name read_file: not its error
    v2 = [r for r in rows if r.context["content_version"] == change.candidate_version]
    assert len(v2) == after and all(r.outcome == "error" and r.error_type == "ToolError" for r in v2)
    assert all(r.context["blamed_tools"] == ["read_file"] for r in v2)


def test_who_is_charged_with_which_error(home, guard):
    """At the dispatcher: the rules one by one, with two skills in a turn."""
    from sil_hermes import plugin

    (home / "skills" / "tool-skill").mkdir()
    (home / "skills" / "tool-skill" / "SKILL.md").write_text(TOOL_SKILL)
    rt = attach(guard)

    def turn(session, *steps, completed=True):
        for tool, args in steps:
            call(tool, args, session_id=session)
        plugin.on_session_end(session_id=session, completed=completed, interrupted=False)
        rt.drain()

    demo, tool = ("skill_view", {"name": "demo-skill"}), ("skill_view", {"name": "tool-skill"})
    read = ("read_file", {"path": MISSING})
    turn("s1", read, demo, tool)  # an error before the loads: nobody's
    turn("s2", demo, tool, read)  # tool-skill names read_file: its error, not demo-skill's
    turn("s3", tool, ("skill_view", {"name": "tool-skill", "file_path": "references/gone.md"}))  # its own file
    turn("s4", demo, completed=False)  # a failed turn fails every skill it loaded
    call("skill_manage", PATCH)  # demo-skill v2 is in flight
    rt.drain()
    turn("s5", demo, read)  # read_file failed under v1 too: not v2's
    turn("s6", demo, ("skill_view", {"name": "missing-reference"}))  # first seen under v2: v2's
    turn("s7", tool, ("skill_view", {"name": "missing-reference"}))  # tool-skill has no change in flight

    got = {(r.target, r.context["session_id"]): (r.outcome, r.context["blamed_tools"])
           for t in (TARGET, "hermes:tool-skill") for r in records(guard, t)}
    assert got == {
        (TARGET, "s1"): ("ok", []), ("hermes:tool-skill", "s1"): ("ok", []),
        (TARGET, "s2"): ("ok", []), ("hermes:tool-skill", "s2"): ("error", ["read_file"]),
        ("hermes:tool-skill", "s3"): ("error", ["skill_view"]),
        (TARGET, "s4"): ("error", []),
        (TARGET, "s5"): ("ok", []),
        (TARGET, "s6"): ("error", ["skill_view"]),
        ("hermes:tool-skill", "s7"): ("ok", []),
    }
    s4 = next(r for r in records(guard, TARGET) if r.context["session_id"] == "s4")
    assert s4.error_type == "TurnFailed"
