"""A GuardMiddleware run (create_agent) is one span that wraps its model and tool spans, and
is current inside each of its steps only: spans a model client or a tool makes are its children."""

from __future__ import annotations

import asyncio

import pytest

pytest.importorskip("langchain.agents")

from langchain.agents import create_agent  # noqa: E402
from langchain_core.tools import tool  # noqa: E402

from sil_core import current_call  # noqa: E402
from sil_langgraph import GuardMiddleware  # noqa: E402

from ..langgraph.test_middleware import ScriptedChatModel, tool_turns  # noqa: E402


def test_the_run_span_wraps_model_and_tool_spans(otel, guard):
    tracer = otel.tracer
    seen = []

    def respond(messages, settings):
        with tracer.start_as_current_span("chat fake-model"):  # what an instrumented model client makes
            seen.append(current_call().target)  # the run is the current call inside its steps
            return tool_turns(2)(messages, settings)

    @tool
    def lookup(q: str) -> str:
        """Look something up."""
        with tracer.start_as_current_span("execute_tool lookup"):
            current_call().metrics["lookups"] = current_call().metrics.get("lookups", 0) + 1
            return f"fact {q}"

    agent = create_agent(ScriptedChatModel(respond=respond), [lookup], middleware=[GuardMiddleware(guard, "agent")])
    with tracer.start_as_current_span("request"):
        agent.invoke({"messages": [("user", "hi")]})
    guard.flush()
    spans = {s.name: s for s in otel.finished()}
    run = next(s for s in otel.finished() if s.name == "invoke_agent agent")
    request = spans["request"]
    assert run.parent.span_id == request.context.span_id
    models = otel.finished("chat ")
    tools = otel.finished("execute_tool ")
    assert len(models) == 3 and len(tools) == 2
    assert all(s.parent.span_id == run.context.span_id for s in models + tools)
    assert seen == ["agent"] * 3
    (record,) = guard.store.read_calls("agent", limit=5)
    assert run.attributes["sil.call_id"] == record.id and record.metrics == {"lookups": 2.0}


def test_concurrent_async_runs_keep_their_own_spans(otel, guard):
    tracer = otel.tracer

    def respond(messages, settings):
        with tracer.start_as_current_span("chat fake-model"):
            return tool_turns(1)(messages, settings)

    @tool
    async def lookup(q: str) -> str:
        """Look something up."""
        await asyncio.sleep(0.01)
        with tracer.start_as_current_span("execute_tool lookup"):
            return f"fact {q}"

    agent = create_agent(ScriptedChatModel(respond=respond), [lookup], middleware=[GuardMiddleware(guard, "agent")])

    async def main():
        await asyncio.gather(*(agent.ainvoke({"messages": [("user", f"q{i}")]}) for i in range(8)))

    asyncio.run(main())
    guard.flush()
    runs = {s.context.span_id for s in otel.finished("invoke_agent ")}
    assert len(runs) == 8
    children = otel.finished("chat ") + otel.finished("execute_tool ")
    assert len(children) == 8 * 3 and all(s.parent.span_id in runs for s in children)
    per_run = {}
    for s in children:
        per_run[s.parent.span_id] = per_run.get(s.parent.span_id, 0) + 1
    assert sorted(per_run.values()) == [3] * 8  # two model calls and one tool call each, never mixed
