"""Hermes' background review fork shares the foreground's ``session_id`` and runs on its
own thread while the next foreground turn goes on. End to end (real ``AIAgent``, its real
review fork, fake model on 127.0.0.1): the review's write is a change by the background
review, its reads and its failed tool call are no uses, and each foreground turn's record
is exactly its own."""

import threading
import time

from ._fake_llm import FakeLLM, last_user, records, turn_results
from .test_blame import make_agent
from .test_e2e import PATCH, TARGET


def review_running() -> bool:
    return any(t.name == "bg-review" and t.is_alive() for t in threading.enumerate())


def script(second_turn: threading.Event):
    """Foreground turns load demo-skill and answer. The review (after turn 1) waits for
    turn 2 to start, then reads demo-skill, fails a tool call, patches demo-skill and
    ends, all while turn 2 is running (turn 2 answers only once the review is over)."""

    def replies(messages):
        user = last_user(messages) or ""
        results = turn_results(messages)
        if user.startswith("Review the conversation above"):
            if not results:
                second_turn.wait(30)
                return {"tool_calls": [("skill_view", {"name": "demo-skill"})]}
            if len(results) == 1:
                return {"tool_calls": [("skill_view", {"name": "missing-reference"})]}
            if len(results) == 2:
                return {"tool_calls": [("skill_manage", PATCH)]}
            return {"content": "Patched demo-skill."}
        if not results:
            if user == "second":
                second_turn.set()
            return {"tool_calls": [("skill_view", {"name": "demo-skill"})]}
        deadline = time.monotonic() + 30
        while user == "second" and review_running() and time.monotonic() < deadline:
            time.sleep(0.05)
        return {"content": "OK"}

    return replies


def test_the_review_overlapping_a_turn_records_only_its_write(home, guard):
    from sil_hermes import SkillConfigAdapter, SkillGuard
    from tools.skill_usage import mark_agent_created

    import sil_hermes._runtime as rt_mod

    SkillGuard(guard, adapter=SkillConfigAdapter())
    rt = rt_mod._runtime
    mark_agent_created("demo-skill")  # the review may only edit skills an agent created
    second_turn = threading.Event()
    with FakeLLM(script(second_turn)) as fake:
        agent = make_agent(fake, toolsets=("skills",))
        agent._skill_nudge_interval = 1  # review after turn 1 (config: skills.creation_nudge_interval)
        first = agent.run_conversation("first")
        agent._skill_nudge_interval = 0  # and only after turn 1
        second = agent.run_conversation("second", conversation_history=first["messages"])
        assert not review_running()
        review_requests = [r for r in fake.requests if (last_user(r["messages"]) or "").startswith("Review")]
    rt.drain()
    assert first["completed"] and second["completed"] and len(review_requests) == 4  # it did run, overlapping

    rows = records(guard, TARGET)
    print("records:", [(r.outcome, r.context.get("tool_errors")) for r in rows])
    assert [(r.outcome, r.context["source"], r.context["tool_errors"]) for r in rows] == \
        [("ok", "skill_view", 0), ("ok", "skill_view", 0)]  # one per foreground turn, as they were
    assert {r.context["session_id"] for r in rows} == {agent.session_id}
    change = guard.change(TARGET)
    assert change is not None and change.in_flight
    assert [e["actor"] for e in guard.trail(TARGET) if e["type"] == "change_proposed"] == ["hermes:background_review"]
    assert [row["writer"] for _, row, _ in guard.store.kv_list("hermes_edit")] == ["background_review"]


def test_review_hook_calls_are_told_apart_at_the_dispatcher(home, guard):
    """Under the review's write origin (set for its whole turn), a load, a tool error and
    a turn end are not recorded, and do not touch the foreground's open turn."""
    import json

    from model_tools import handle_function_call
    from sil_hermes import SkillConfigAdapter, SkillGuard, plugin
    from tools.skill_provenance import reset_current_write_origin, set_current_write_origin

    import sil_hermes._runtime as rt_mod

    SkillGuard(guard, adapter=SkillConfigAdapter())
    rt = rt_mod._runtime
    handle_function_call("skill_view", {"name": "demo-skill"}, session_id="s")  # the foreground's turn
    token = set_current_write_origin("background_review")
    try:
        assert json.loads(handle_function_call("skill_view", {"name": "demo-skill"}, session_id="s"))["success"]
        handle_function_call("skill_view", {"name": "missing-reference"}, session_id="s")
        plugin.on_session_end(session_id="s", completed=True, interrupted=False)
    finally:
        reset_current_write_origin(token)
    handle_function_call("read_file", {"path": "/nonexistent/x.md"}, session_id="s")
    plugin.on_session_end(session_id="s", completed=False, interrupted=False)
    rt.drain()
    [row] = records(guard, TARGET)
    assert (row.outcome, row.error_type, row.context["tool_errors"]) == ("error", "TurnFailed", 1)
