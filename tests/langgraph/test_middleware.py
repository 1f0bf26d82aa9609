"""GuardMiddleware on real ``create_agent`` graphs: one record per agent run, per-run routing
of the system prompt, concurrency, failures, interrupt and resume, streaming."""

import asyncio
import gc
import itertools
import random
import threading
from typing import Any, Callable

import pytest

pytest.importorskip("langchain.agents")

from langchain.agents import create_agent  # noqa: E402
from langchain.agents.middleware import HumanInTheLoopMiddleware  # noqa: E402
from langchain_core.callbacks import BaseCallbackHandler  # noqa: E402
from langchain_core.language_models import BaseChatModel  # noqa: E402
from langchain_core.messages import AIMessage, SystemMessage, ToolMessage  # noqa: E402
from langchain_core.outputs import ChatGeneration, ChatResult  # noqa: E402
from langchain_core.tools import tool  # noqa: E402
from langgraph.checkpoint.memory import InMemorySaver  # noqa: E402
from langgraph.types import Command  # noqa: E402

from sil_core import DictConfigAdapter, Guard, RolloutPolicy, State  # noqa: E402
from sil_langgraph import GuardMiddleware  # noqa: E402

T = "agent"
_ids = itertools.count()


class ScriptedChatModel(BaseChatModel):
    """A fake chat model (no network): ``respond(messages, settings)`` returns the reply."""

    respond: Callable[..., AIMessage]
    model_name: str = "fake-model"

    @property
    def _llm_type(self) -> str:
        return "scripted-fake"

    def bind_tools(self, tools: Any, **kwargs: Any) -> Any:
        return self.bind(**kwargs)

    def _generate(self, messages, stop=None, run_manager=None, **kwargs):
        return ChatResult(generations=[ChatGeneration(message=self.respond(messages, kwargs))])


def _this_run(messages):
    """The messages of the current run (after the last human message)."""
    for i in range(len(messages) - 1, -1, -1):
        if messages[i].type == "human":
            return messages[i + 1:]
    return messages


def tool_turns(n: int, tool_name: str = "lookup", answer: Any = "done") -> Callable[..., AIMessage]:
    """Call ``tool_name`` once per turn, ``n`` turns, then answer (``answer(messages)`` if callable)."""
    def respond(messages, settings):
        done = sum(isinstance(m, ToolMessage) for m in _this_run(messages))
        if done < n:
            return AIMessage(content="", tool_calls=[{"name": tool_name, "args": {"q": str(done)}, "id": f"c{next(_ids)}"}])
        return AIMessage(content=answer(messages) if callable(answer) else answer)
    return respond


@tool
def lookup(q: str) -> str:
    """Look something up."""
    return f"fact {q}"


@tool
def broken(q: str) -> str:
    """A tool that fails."""
    raise KeyError("the database is down")


def system_prompt(messages) -> str:
    return " ".join(m.content for m in messages if isinstance(m, SystemMessage))


@pytest.fixture
def guard():
    g = Guard("memory://", adapter=DictConfigAdapter({T: {"system_prompt": "Be exact."}}), flush_interval=60,
              refresh_interval=0)
    yield g
    g.close()


def records(g):
    g.flush()
    return g.store.read_calls(T, limit=100_000)


def test_one_record_per_run_of_several_tool_turns(guard):
    agent = create_agent(ScriptedChatModel(respond=tool_turns(3)), [lookup],
                         middleware=[GuardMiddleware(guard, T, check=lambda s: s["messages"][-1].content == "done")])
    for i in range(5):
        out = agent.invoke({"messages": [("user", f"q{i}")]})
        assert out["messages"][-1].content == "done"
    recs = records(guard)
    assert len(recs) == 5  # a per-model-call guard would give 4 records per run (20)
    assert all(r.outcome == "ok" for r in recs)
    assert recs[0].context_value() == {"model_calls": 4, "tool_calls": 3, "tool_errors": 0}


def test_serves_the_adapter_config_before_a_change_and_tags_metadata(guard):
    seen, metadata = [], []

    class Meta(BaseCallbackHandler):
        def on_chat_model_start(self, serialized, messages, **kw):
            metadata.append(kw.get("metadata") or {})

    def respond(messages, settings):
        seen.append((system_prompt(messages), settings.get("temperature")))
        return AIMessage(content="ok")

    agent = create_agent(ScriptedChatModel(respond=respond), [], system_prompt="original",
                         middleware=[GuardMiddleware(guard, T)])
    agent.invoke({"messages": [("user", "hi")]}, {"callbacks": [Meta()]})
    assert seen == [("Be exact.", None)]
    guard.propose(T, {"system_prompt": "Be brief.", "temperature": 0.1}, mode="switch")
    agent.invoke({"messages": [("user", "hi")]}, {"callbacks": [Meta()]})
    assert seen[-1] == ("Be brief.", 0.1)
    change = guard.change(T)
    assert metadata[-1]["sil_version:agent"] == change.candidate_version
    assert metadata[-1]["sil_change:agent"] == change.id


def test_canary_on_the_system_prompt_is_rolled_back_and_per_arm_success_is_true(guard):
    rng, lock = random.Random(11), threading.Lock()
    truth = {"Be exact.": [0, 0], "Be creative.": [0, 0]}  # prompt -> [right, wrong]

    def answer(messages):
        prompt = system_prompt(messages)
        with lock:
            wrong = rng.random() < (0.70 if prompt == "Be creative." else 0.03)
            truth[prompt][wrong] += 1
        return "wrong" if wrong else "42"

    guard.policy = RolloutPolicy(min_calls=30, step_calls=1000, ramp=(0.5,), horizon=10_000)
    agent = create_agent(ScriptedChatModel(respond=tool_turns(1, answer=answer)), [lookup],
                         middleware=[GuardMiddleware(guard, T, check=lambda s: s["messages"][-1].content == "42")])
    change = guard.propose(T, {"system_prompt": "Be creative."})
    for i in range(400):
        agent.invoke({"messages": [("user", "what is 6 x 7?")]})
        if i % 20 == 19:
            guard.flush()
            if guard.change(T).state == State.ROLLED_BACK:
                break
    guard.flush()
    assert guard.change(T).state == State.ROLLED_BACK
    for prompt, version in (("Be exact.", change.baseline_version), ("Be creative.", change.candidate_version)):
        right, wrong = truth[prompt]
        stats = guard.stats(T, version=version)
        assert stats.successes + stats.failures == right + wrong
        assert abs(stats.success_rate - right / (right + wrong)) <= 0.05
    print({p: round(r / (r + w), 3) for p, (r, w) in truth.items()},
          {v: guard.stats(T, version=v).success_rate for v in (change.baseline_version, change.candidate_version)})


async def test_20_concurrent_ainvoke_runs_never_mix(guard):
    def respond(messages, settings):
        return AIMessage(content=system_prompt(messages))  # the answer names the prompt it was served

    async def slow_lookup(q: str) -> str:
        """Look something up, slowly."""
        await asyncio.sleep(random.random() * 0.01)
        return q

    from langchain_core.tools import StructuredTool

    slow = StructuredTool.from_function(coroutine=slow_lookup, name="lookup", description="look up")
    agent = create_agent(ScriptedChatModel(respond=tool_turns(2, answer=lambda m: system_prompt(m))), [slow],
                         middleware=[GuardMiddleware(guard, T)])
    change = guard.propose(T, {"system_prompt": "Be creative."})
    for threaded in (False, True):
        outs = await asyncio.gather(*(
            agent.ainvoke({"messages": [("user", f"run {i}")]},
                          {"configurable": {"thread_id": f"t{i}"}} if threaded else None)
            for i in range(20)))
        guard.flush()
        recs = records(guard)[-20:]
        assert len(recs) == 20
        served = sorted(o["messages"][-1].content for o in outs)
        arms = sorted("Be creative." if r.version == change.candidate_version else "Be exact." for r in recs)
        assert served == arms
        assert all(r.context_value()["model_calls"] == 3 for r in recs)
    assert len(records(guard)) == 40


def test_a_tool_exception_propagates_and_is_a_failure(guard):
    agent = create_agent(ScriptedChatModel(respond=tool_turns(1, tool_name="broken")), [broken],
                         middleware=[GuardMiddleware(guard, T)])
    with pytest.raises(KeyError, match="database"):
        agent.invoke({"messages": [("user", "hi")]})
    recs = records(guard)
    assert [(r.outcome, r.error_type) for r in recs] == [("error", "KeyError")]


async def test_a_model_exception_propagates_and_is_a_failure_async(guard):
    boom = ValueError("model overloaded")

    def respond(messages, settings):
        raise boom

    agent = create_agent(ScriptedChatModel(respond=respond), [], middleware=[GuardMiddleware(guard, T)])
    with pytest.raises(ValueError) as info:
        await agent.ainvoke({"messages": [("user", "hi")]})
    assert info.value is boom
    assert [(r.outcome, r.error_type) for r in records(guard)] == [("error", "ValueError")]


def test_a_failing_or_raising_check_is_a_failure_and_the_result_is_returned(guard):
    def check(state):
        raise RuntimeError("bad check")

    for c in (lambda s: False, check):
        agent = create_agent(ScriptedChatModel(respond=tool_turns(0)), [], middleware=[GuardMiddleware(guard, T, check=c)])
        assert agent.invoke({"messages": [("user", "hi")]})["messages"][-1].content == "done"
    assert [r.outcome for r in records(guard)] == ["error", "error"]


@pytest.mark.parametrize("move", ["promote", "rollback"])
def test_hitl_interrupt_then_resume_is_one_record_on_the_same_version(guard, move):
    prompts = []

    def answer(messages):
        prompts.append(system_prompt(messages))
        return "sent"

    def respond(messages, settings):
        prompts.append(system_prompt(messages))
        return tool_turns(1, tool_name="lookup", answer=answer)(messages, settings)

    def build(g):
        return create_agent(ScriptedChatModel(respond=respond), [lookup], checkpointer=saver,
                            middleware=[GuardMiddleware(g, T),
                                        HumanInTheLoopMiddleware(interrupt_on={"lookup": True})])

    saver = InMemorySaver()
    agent = build(guard)
    change = guard.propose(T, {"system_prompt": "Be creative."})
    cfg = {"configurable": {"thread_id": "hitl"}}
    out = agent.invoke({"messages": [("user", "hi")]}, cfg)
    assert "__interrupt__" in out
    gc.collect()
    assert records(guard) == []  # an interrupt is not a failure, and not recorded yet
    first = prompts[0]
    getattr(guard, move)(T)
    # resumed by another process: a new guard on the same store, a new middleware
    g2 = Guard(guard.store, adapter=DictConfigAdapter({T: {"system_prompt": "Be exact."}}), flush_interval=60,
               refresh_interval=0)
    try:
        out = build(g2).invoke(Command(resume={"decisions": [{"type": "approve"}]}), cfg)
        assert out["messages"][-1].content == "sent"
        assert set(prompts) == {first}
        recs = records(g2)
        assert len(recs) == 1 and recs[0].outcome == "ok"
        served = change.candidate_version if first == "Be creative." else change.baseline_version
        assert recs[0].version == served
        assert recs[0].context_value()["tool_calls"] == 1
        assert guard.store.kv_get("pin", f"{T}|hitl")[0] == {}  # cleared
    finally:
        g2.close()


def test_hitl_resume_in_the_same_process(guard):
    agent = create_agent(ScriptedChatModel(respond=tool_turns(1)), [lookup], checkpointer=InMemorySaver(),
                         middleware=[GuardMiddleware(guard, T), HumanInTheLoopMiddleware(interrupt_on={"lookup": True})])
    cfg = {"configurable": {"thread_id": "same"}}
    agent.invoke({"messages": [("user", "hi")]}, cfg)
    agent.invoke(Command(resume={"decisions": [{"type": "approve"}]}), cfg)
    recs = records(guard)
    assert len(recs) == 1 and recs[0].outcome == "ok"
    assert recs[0].context_value() == {"model_calls": 2, "tool_calls": 1, "tool_errors": 0}


def test_tool_errors_are_counted(guard):
    from langchain_core.tools import StructuredTool, ToolException

    def flaky(q: str) -> str:
        raise ToolException("timeout")

    soft = StructuredTool.from_function(flaky, name="flaky", description="fails softly", handle_tool_error=True)
    agent = create_agent(ScriptedChatModel(respond=tool_turns(2, tool_name="flaky")), [soft],
                         middleware=[GuardMiddleware(guard, T)])
    agent.invoke({"messages": [("user", "hi")]})
    assert records(guard)[0].context_value()["tool_errors"] == 2


def test_streaming_sync_and_async(guard):
    agent = create_agent(ScriptedChatModel(respond=tool_turns(2)), [lookup], middleware=[GuardMiddleware(guard, T)])
    chunks = list(agent.stream({"messages": [("user", "hi")]}, stream_mode="updates"))
    assert len(chunks) >= 5

    async def consume():
        return [c async for c in agent.astream({"messages": [("user", "hi")]}, stream_mode="messages")]

    assert asyncio.run(consume())
    recs = records(guard)
    assert len(recs) == 2 and all(r.context_value()["model_calls"] == 3 for r in recs)


def test_key_routes_and_a_custom_configure(guard):
    seen = []

    def respond(messages, settings):
        seen.append(system_prompt(messages))
        return AIMessage(content="ok")

    def configure(request, config):
        return request.override(system_message=SystemMessage(content="custom " + config["system_prompt"]))

    mw = GuardMiddleware(guard, T, key=lambda state, config: config["configurable"]["user"], configure=configure)
    agent = create_agent(ScriptedChatModel(respond=respond), [], middleware=[mw])
    guard.propose(T, {"system_prompt": "Be creative."})
    for _ in range(3):
        agent.invoke({"messages": [("user", "hi")]}, {"configurable": {"user": "ada"}})
    assert len(set(seen)) == 1 and seen[0].startswith("custom ")
