"""OpenTelemetry export (sil_core.otel) against the SDK's in-memory exporters and reader."""

from __future__ import annotations

import asyncio
import contextvars
import subprocess
import sys
import time

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import SpanProcessor
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter
from opentelemetry.trace import StatusCode

from sil_core import DictConfigAdapter, Guard, RolloutPolicy, current_call
from sil_core.otel import instrument, uninstrument


def sil_spans(otel, target=None):
    return [s for s in otel.finished("invoke_agent ") if target is None or s.attributes["sil.target"] == target]


def parent_of(span):
    return span.parent.span_id if span.parent is not None else None


# -- parentage -----------------------------------------------------------------------------------
def test_a_call_nests_under_the_callers_span_and_parents_what_it_does(otel, guard):
    @guard.track("agent")
    def agent():
        with otel.tracer.start_as_current_span("model"):
            pass
        return "ok"

    with otel.tracer.start_as_current_span("request") as outer:
        assert agent() == "ok"
        with guard.call("router"):
            with otel.tracer.start_as_current_span("tool"):
                pass
        assert trace.get_current_span() is outer  # the caller's span is current again

    spans = {s.name: s for s in otel.finished()}
    request, model, tool = spans["request"], spans["model"], spans["tool"]
    agent_span, router_span = spans["invoke_agent agent"], spans["invoke_agent router"]
    assert parent_of(agent_span) == parent_of(router_span) == request.context.span_id
    assert parent_of(model) == agent_span.context.span_id
    assert parent_of(tool) == router_span.context.span_id
    assert {agent_span.context.trace_id, model.context.trace_id} == {request.context.trace_id}
    assert agent_span.kind == trace.SpanKind.INTERNAL
    assert dict(agent_span.attributes) == {
        "gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": "agent", "sil.target": "agent",
        "sil.outcome": "ok", "sil.call_id": agent_span.attributes["sil.call_id"]}
    guard.flush()
    stored = {r.id for r in guard.store.read_calls("agent", limit=5)}
    assert stored == {agent_span.attributes["sil.call_id"]}  # the span names the stored record
    assert trace.get_current_span() is trace.INVALID_SPAN


async def test_async_calls_nest_and_concurrent_tasks_keep_their_own_spans(otel, guard):
    @guard.track("worker")
    async def worker(i):
        await asyncio.sleep(0.01 * (3 - i))  # they finish in the reverse order
        with otel.tracer.start_as_current_span(f"step-{i}"):
            await asyncio.sleep(0)
        return i

    async def one(i):
        with otel.tracer.start_as_current_span(f"task-{i}"):
            return await worker(i)

    with otel.tracer.start_as_current_span("request") as outer:
        assert await asyncio.gather(*(one(i) for i in range(3))) == [0, 1, 2]
        async with guard.call("router"):
            await asyncio.sleep(0)
        assert trace.get_current_span() is outer

    spans = {s.name: s for s in otel.finished()}
    workers = {s.context.span_id: s for s in sil_spans(otel, "worker")}
    assert len(workers) == 3
    for i in range(3):
        step = spans[f"step-{i}"]
        mine = workers[parent_of(step)]  # each step sits in its own call's span ...
        assert parent_of(mine) == spans[f"task-{i}"].context.span_id  # ... which sits in its own task's
    assert parent_of(spans["invoke_agent router"]) == spans["request"].context.span_id


def test_a_guarded_langgraph_node_sits_inside_the_graphs_trace(otel, guard):
    pytest.importorskip("langgraph")
    from typing import TypedDict

    from langgraph.graph import END, START, StateGraph

    from sil_langgraph import guarded_node

    class S(TypedDict, total=False):
        x: int

    def work(state: S) -> S:
        with otel.tracer.start_as_current_span("chat-model"):
            current_call().metrics["tokens_in"] = 12
        return {"x": state["x"] + 1}

    b = StateGraph(S)
    b.add_node("work", guarded_node(work, guard=guard))
    b.add_edge(START, "work")
    b.add_edge("work", END)
    graph = b.compile()
    with otel.tracer.start_as_current_span("graph-run"):
        assert graph.invoke({"x": 1}, {"configurable": {"thread_id": "t1"}}) == {"x": 2}

    async def run_async():
        with otel.tracer.start_as_current_span("graph-arun"):
            return await graph.ainvoke({"x": 5}, {"configurable": {"thread_id": "t2"}})

    assert asyncio.run(run_async()) == {"x": 6}
    spans = otel.finished()
    for outer_name in ("graph-run", "graph-arun"):
        outer = next(s for s in spans if s.name == outer_name)
        node = next(s for s in sil_spans(otel, "work") if parent_of(s) == outer.context.span_id)
        model = [s for s in spans if s.name == "chat-model" and parent_of(s) == node.context.span_id]
        assert len(model) == 1 and node.context.trace_id == outer.context.trace_id
        assert node.attributes["gen_ai.usage.input_tokens"] == 12
        assert node.attributes["sil.outcome"] == "ok"


def test_a_generator_finished_in_another_context_ends_its_own_span(otel, guard):
    """Each ``next`` in a fresh copy of the context (Starlette iterates a sync generator
    that way): the call's span still ends once, with its own record, and no span is left
    current."""

    @guard.track("stream")
    def stream():
        yield 1
        yield 2

    with guard.call("outer") as outer:
        it = stream()
        chunks = []
        for _ in range(3):
            try:
                chunks.append(contextvars.copy_context().run(next, it))
            except StopIteration:
                pass
        assert trace.get_current_span().name == "invoke_agent outer"  # the outer call's, still open
    assert chunks == [1, 2]
    assert trace.get_current_span() is trace.INVALID_SPAN
    stream_span, outer_span = sil_spans(otel, "stream"), sil_spans(otel, "outer")
    assert len(stream_span) == len(outer_span) == 1
    assert parent_of(stream_span[0]) == outer_span[0].context.span_id
    assert outer_span[0].attributes["sil.call_id"] == outer.call_id
    assert stream_span[0].attributes["sil.call_id"] != outer.call_id
    guard.flush()
    assert {r.id for r in guard.store.read_calls("stream", limit=5)} == {stream_span[0].attributes["sil.call_id"]}


async def test_a_call_finished_in_a_task_it_started_restores_the_parent_context(otel, guard):
    """``Recorder.begin`` in one task, ``end`` in a task created inside the call: the
    reset fails there, and the call's ended span is not left current in that task."""
    rec = guard.recorder("split")
    with otel.tracer.start_as_current_span("request") as outer:
        begun = rec.begin()

        async def finish():
            assert trace.get_current_span().name == "invoke_agent split"
            rec.put(rec.end(begun, time.time(), 0.001))
            return trace.get_current_span()

        left = await asyncio.create_task(finish())
        assert left is outer  # the parent is current again in the task, not the ended span
    assert [s.name for s in sil_spans(otel)] == ["invoke_agent split"]


# -- outcomes and attributes -----------------------------------------------------------------
async def test_errors_set_error_type_and_status_and_control_flow_does_not(otel, guard):
    @guard.track("agent", success=lambda r: r == "good")
    def agent(what):
        if what == "raise":
            raise KeyError("no such tool")
        return what

    with pytest.raises(KeyError):
        agent("raise")
    agent("bad")
    agent("good")

    @guard.track("slow")
    async def slow():
        await asyncio.sleep(10)

    task = asyncio.create_task(slow())
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    raised, judged, good = sil_spans(otel, "agent")
    assert raised.attributes["error.type"] == "KeyError" and raised.attributes["sil.outcome"] == "error"
    assert raised.status.status_code == StatusCode.ERROR and "no such tool" in raised.status.description
    assert [e.name for e in raised.events] == ["exception"]
    assert raised.events[0].attributes["exception.type"] == "KeyError"
    assert judged.attributes["error.type"] == "PredicateFailed" and judged.status.status_code == StatusCode.ERROR
    assert "error.type" not in good.attributes and good.status.status_code == StatusCode.UNSET
    (cancelled,) = sil_spans(otel, "slow")
    assert cancelled.attributes["sil.outcome"] == "cancelled"
    assert cancelled.attributes["sil.control_flow"] == "CancelledError"
    assert "error.type" not in cancelled.attributes and cancelled.status.status_code == StatusCode.UNSET


def test_tokens_cost_score_and_custom_metrics_are_attributes(otel, guard):
    with guard.call("writer") as call:
        call.metrics.update(tokens_in=812, tokens_out=120, cost_usd=0.0021, faithfulness=0.75)
        call.score = 0.9
    (span,) = sil_spans(otel, "writer")
    a = span.attributes
    assert (a["gen_ai.usage.input_tokens"], a["gen_ai.usage.output_tokens"]) == (812, 120)
    assert isinstance(a["gen_ai.usage.input_tokens"], int)
    assert (a["sil.cost_usd"], a["sil.score"], a["sil.metric.faithfulness"]) == (0.0021, 0.9, 0.75)


def test_spans_carry_their_arm_version_and_change_during_a_canary(otel, guard):
    adapter = DictConfigAdapter({"bot": {"model": "m1"}})
    change = guard.propose("bot", {"model": "m2"}, adapter=adapter, mode="canary",
                           policy=RolloutPolicy(ramp=(0.5,), observe_only=True, horizon=10**6))
    served = {}
    for i in range(60):
        with guard.call("bot", key=i) as call:
            served[call.call_id] = (call.arm, call.version, call.config["model"])
    guard.flush()
    stored = {r.id: (r.arm, r.version) for r in guard.store.read_calls("bot", limit=100)}
    spans = sil_spans(otel, "bot")
    assert len(spans) == 60
    by_arm = {"baseline": 0, "candidate": 0}
    for s in spans:
        a = s.attributes
        arm, version, model = served[a["sil.call_id"]]
        assert (a["sil.arm"], a["sil.version"]) == (arm, version) == stored[a["sil.call_id"]]
        assert a["sil.change_id"] == change.id
        expected = change.candidate_version if arm == "candidate" else change.baseline_version
        assert version == expected and model == ("m2" if arm == "candidate" else "m1")
        by_arm[arm] += 1
    assert by_arm["baseline"] > 5 and by_arm["candidate"] > 5
    calls = {(p[0]["sil.arm"], p[0]["sil.version"]): p[1].value for p in otel.points("sil.calls")}
    assert calls == {("baseline", change.baseline_version): by_arm["baseline"],
                     ("candidate", change.candidate_version): by_arm["candidate"]}


# -- metrics ---------------------------------------------------------------------------------
def test_calls_and_durations_are_counted_with_their_attributes(otel, guard):
    @guard.track("agent")
    def agent(i):
        time.sleep(0.002)
        if i % 10 >= 7:
            raise RuntimeError("down")
        return i

    for i in range(20):
        try:
            agent(i)
        except RuntimeError:
            pass
    calls = {p[0]["sil.outcome"]: (p[0], p[1].value) for p in otel.points("sil.calls")}
    assert calls["ok"] == ({"sil.target": "agent", "sil.outcome": "ok"}, 14)
    assert calls["error"] == ({"sil.target": "agent", "sil.outcome": "error"}, 6)
    durations = {p[0]["sil.outcome"]: p[1] for p in otel.points("sil.call.duration")}
    assert (durations["ok"].count, durations["error"].count) == (14, 6)
    assert 14 * 0.002 <= durations["ok"].sum < 14 * 0.2
    assert durations["ok"].explicit_bounds[:3] == (0.005, 0.01, 0.02)  # seconds, not milliseconds


def test_judged_metrics_are_histograms_from_calls_and_feedback(otel, guard):
    ids = []
    for i in range(4):
        with guard.call("writer") as call:
            call.metrics.update(tokens_in=100 * (i + 1), tokens_out=10, cost_usd=0.001, faithfulness=0.5)
            call.score = 0.25 * i
        ids.append(call.call_id)
    guard.feedback(ids[0], score=1.0, metrics={"faithfulness": 0.9})
    tokens = {(p[0]["gen_ai.token.type"], p[0]["sil.source"]): (p[1].count, p[1].sum)
              for p in otel.points("sil.call.tokens")}
    assert tokens == {("input", "call"): (4, 1000), ("output", "call"): (4, 40)}
    (cost,) = otel.points("sil.call.cost")
    assert cost[1].count == 4 and cost[1].sum == pytest.approx(0.004)
    scores = {p[0]["sil.source"]: (p[1].count, p[1].sum) for p in otel.points("sil.call.score")}
    assert scores == {"call": (4, pytest.approx(1.5)), "feedback": (1, 1.0)}
    custom = {(p[0]["sil.metric"], p[0]["sil.source"]): p[1].count for p in otel.points("sil.call.metric")}
    assert custom == {("faithfulness", "call"): 4, ("faithfulness", "feedback"): 1}


# -- feedback --------------------------------------------------------------------------------
def test_late_feedback_is_a_span_linked_to_the_call(otel, guard):
    with guard.call("agent") as call:
        pass
    with otel.tracer.start_as_current_span("thumbs-down-endpoint") as endpoint:
        guard.feedback(call.call_id, success=False, score=0.1)
    guard.feedback("not-a-call-of-this-process", score=0.5)
    (call_span,) = sil_spans(otel, "agent")
    linked, unknown = otel.finished("sil.feedback")
    assert parent_of(linked) == endpoint.get_span_context().span_id
    assert [link.context.span_id for link in linked.links] == [call_span.context.span_id]
    assert dict(linked.attributes) == {"sil.call_id": call.call_id, "sil.target": "agent",
                                       "sil.feedback.success": False, "sil.score": 0.1}
    assert [e.name for e in linked.events] == ["sil.feedback"]
    assert unknown.links == () or list(unknown.links) == []
    assert dict(unknown.attributes) == {"sil.call_id": "not-a-call-of-this-process", "sil.score": 0.5}
    counted = sorted((p[0].get("sil.target", ""), p[0].get("sil.feedback.success", ""), p[1].value)
                     for p in otel.points("sil.feedback"))
    assert counted == [("", "", 1), ("agent", False, 1)]
    assert call_span.end_time <= linked.start_time  # a new record: the call's span is not rewritten


# -- decisions -------------------------------------------------------------------------------
def test_propose_and_rollback_are_decision_events_with_their_evidence(otel, guard):
    adapter = DictConfigAdapter({"t": {"prompt": "v1"}})
    change = guard.propose("t", {"prompt": "v2"}, adapter=adapter, mode="canary",
                           policy=RolloutPolicy(ramp=(0.5,), min_calls=5, tripwire_consecutive=50))  # the test decides
    for i in range(200):
        try:
            with guard.call("t", key=i) as call:
                if call.arm == "candidate":
                    raise ValueError("worse")
        except ValueError:
            pass
        if guard.change("t").state != "canary":
            break
    guard.drain()
    assert guard.change("t").state == "rolled_back"

    logs = otel.decisions()
    names = [n for n, _, _ in logs]
    assert names[:2] == ["sil.change_proposed", "sil.change_applied"]
    assert "sil.rollback" in names and names[-1] == "sil.rollback_succeeded"
    proposed = logs[0][1]
    assert proposed["sil.change_id"] == change.id and proposed["sil.target"] == "t"
    assert proposed["sil.candidate_version"] == change.candidate_version
    assert proposed["sil.patch"] == '{"prompt": "v2"}'
    _, rollback, body = logs[names.index("sil.rollback")]
    assert rollback["sil.trail.type"] == "rollback_started" and rollback["sil.verdict.kind"] == "regressed"
    n_candidate = rollback["sil.verdict.evidence.n.candidate"]
    assert n_candidate >= 5 and rollback["sil.verdict.evidence.success_rate.candidate"] == 0.0
    assert body["verdict"]["evidence"]["n"]["candidate"] == n_candidate  # the whole evidence, nested
    records = {r.log_record.event_name: r.log_record for r in otel.logs.get_finished_logs()}
    assert records["sil.rollback"].severity_text == "WARN"
    assert records["sil.change_proposed"].severity_text == "INFO"

    spans = otel.finished("sil.decision")
    assert [s.attributes["sil.event"] for s in spans] == names  # the same decisions as spans
    rb = next(s for s in spans if s.attributes["sil.event"] == "sil.rollback")
    assert [e.name for e in rb.events] == ["sil.rollback"]
    assert rb.attributes["sil.verdict.evidence.n.candidate"] == n_candidate


def test_a_manual_rollback_inside_a_request_span_nests_there(otel, guard):
    adapter = DictConfigAdapter({"t": {"prompt": "v1"}})
    guard.propose("t", {"prompt": "v2"}, adapter=adapter, mode="canary")
    with otel.tracer.start_as_current_span("admin-request") as admin:
        assert guard.rollback("t", reason="by hand") is True
    spans = {s.attributes["sil.event"]: s for s in otel.finished("sil.decision")}
    rb = spans["sil.rollback"]
    assert parent_of(rb) == admin.get_span_context().span_id
    assert rb.attributes["sil.verdict.reason"] == "by hand" and rb.attributes["sil.verdict.metric"] == "manual"


def test_decisions_can_go_to_logs_or_spans_only(otel):
    for decisions, logs, spans in ((("logs",), 2, 0), (("spans",), 0, 2)):
        otel.logs.clear()
        otel.spans.clear()
        g = Guard("memory://")
        otel.instrument(g, decisions=decisions)
        g.propose("t", {"p": 2}, adapter=DictConfigAdapter({"t": {"p": 1}}))
        assert (len(otel.decisions()), len(otel.finished("sil.decision"))) == (logs, spans)
        uninstrument(g)
        g.close()


# -- switching it off, and failing open ----------------------------------------------------------
def test_uninstrument_stops_spans_metrics_and_decisions(otel):
    g = Guard("memory://")
    otel.instrument(g)
    with g.call("t"):
        pass
    assert uninstrument(g) is True and uninstrument(g) is False
    otel.spans.clear()
    with g.call("t") as call:
        pass
    g.feedback(call.call_id, score=1.0)
    g.propose("t", {"p": 2}, adapter=DictConfigAdapter({"t": {"p": 1}}))
    assert otel.finished() == [] and otel.decisions() == []
    assert [p[1].value for p in otel.points("sil.calls")] == [1]
    assert g.recorder("t").plain() in (True, False)  # no observer left: the fast lane may serve again
    g.close()


def test_instrumenting_twice_replaces_the_first(otel):
    from sil_core.otel import OtelObserver

    g = Guard("memory://")
    first, second = otel.instrument(g), otel.instrument(g)
    assert isinstance(second, OtelObserver) and first is not second
    with g.call("t"):
        pass
    assert len(sil_spans(otel)) == 1  # one observer, one span
    uninstrument(g)
    g.close()


def test_a_span_left_open_by_an_uninstrument_mid_call_still_ends(otel, guard):
    with guard.call("t"):
        uninstrument(guard)
    assert len(sil_spans(otel)) == 1


def test_a_broken_exporter_or_processor_never_breaks_a_call(otel):
    from sil_core._internal.failopen import error_counts

    class BrokenExporter(SpanExporter):
        def export(self, spans):
            raise ConnectionError("collector down")

    class BrokenProcessor(SpanProcessor):
        def on_start(self, span, parent_context=None):
            raise RuntimeError("processor bug")

    from opentelemetry.sdk.trace import TracerProvider

    for processor in (SimpleSpanProcessor(BrokenExporter()), BrokenProcessor()):
        provider = TracerProvider()
        provider.add_span_processor(processor)
        g = Guard("memory://")
        instrument(g, tracer_provider=provider, meter_provider=otel.meter_provider)
        before = error_counts["observer.call_started"]

        @g.track("t")
        def f(x):
            if x:
                raise ValueError(x)
            return 42

        assert f(0) == 42
        with pytest.raises(ValueError, match="mine"):
            f("mine")
        assert error_counts["observer.call_started"] - before == (2 if isinstance(processor, BrokenProcessor) else 0)
        assert g.stats("t").n == 2
        assert trace.get_current_span() is trace.INVALID_SPAN
        uninstrument(g)
        g.close()
        provider.shutdown()


def test_without_opentelemetry_sil_core_imports_and_instrument_names_the_extra():
    code = (
        "import sys\n"
        "for name in [m for m in sys.modules if m.startswith('opentelemetry')]: del sys.modules[name]\n"
        "sys.modules['opentelemetry'] = None\n"
        "import sil_core, sil_core.otel\n"
        "from sil_core import Guard, MissingExtra\n"
        "g = Guard('memory://')\n"
        "try:\n"
        "    sil_core.otel.instrument(g)\n"
        "except MissingExtra as exc:\n"
        "    print(type(exc).__name__, exc)\n"
        "g.close()\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("MissingExtra") and "pip install 'sil-guard[otel]'" in out.stdout


def test_importing_sil_core_otel_imports_no_opentelemetry():
    code = "import sys, sil_core.otel; print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_a_no_op_tracer_for_the_guard_keeps_the_callers_span_current(otel):
    """The guard exports nowhere (no-op providers), the app traces with its own: what the
    call does still nests under the app's span."""
    from opentelemetry.metrics import NoOpMeterProvider
    from opentelemetry.trace import NoOpTracerProvider

    g = Guard("memory://")
    instrument(g, tracer_provider=NoOpTracerProvider(), meter_provider=NoOpMeterProvider(), decisions=())
    with otel.tracer.start_as_current_span("request") as outer:
        with g.call("t"):
            assert trace.get_current_span() is outer
            with otel.tracer.start_as_current_span("inside"):
                pass
    (inside,) = otel.finished("inside")
    assert parent_of(inside) == outer.get_span_context().span_id
    uninstrument(g)
    g.close()
