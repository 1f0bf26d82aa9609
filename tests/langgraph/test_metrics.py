"""Tokens, cost and evaluator scores on real LangGraph graphs and ``create_agent`` runs: what a
fake chat model reports (``usage_metadata``) is what the guard records, per call and per arm,
under concurrency, streaming and subgraphs, never counted twice."""

import asyncio
import itertools
import random
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterator, TypedDict

import pytest

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, SystemMessage, ToolMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langgraph.graph import END, START, StateGraph

from sil_core import DictConfigAdapter, Guard, PriceTable, RolloutPolicy, current_call
from sil_langgraph import GuardNode, guarded_node, node_config

STAY = RolloutPolicy(ramp=(0.5,), observe_only=True, min_calls=10_000, horizon=100_000)  # a canary that stays at 50 %


class UsageModel(BaseChatModel):
    """A fake chat model (no network) reporting ``usage(messages) -> (tokens in, tokens out)``
    in ``usage_metadata`` and its name in ``response_metadata``; streaming yields the text in
    chunks, the usage on the last one (as OpenAI does)."""

    usage: Callable[[Any], tuple]
    name_reported: str = "fake-small-2025"
    cost: Any = None  # a framework-reported total_cost
    tool_turns: int = 0
    model_name: str = "fake-small"

    @property
    def _llm_type(self) -> str:
        return "usage-fake"

    def bind_tools(self, tools: Any, **kwargs: Any) -> Any:
        return self.bind(**kwargs)

    def _usage(self, messages: Any) -> dict:
        t_in, t_out = self.usage(messages)
        usage = {"input_tokens": t_in, "output_tokens": t_out, "total_tokens": t_in + t_out}
        if self.cost is not None:
            usage["total_cost"] = self.cost
        return usage

    def _reply(self, messages: Any) -> AIMessage:
        start = max((i for i, m in enumerate(messages) if m.type == "human"), default=0)
        done = sum(isinstance(m, ToolMessage) for m in messages[start:])
        calls = [{"name": "lookup", "args": {"q": str(done)}, "id": f"c{next(_ids)}"}] if done < self.tool_turns else []
        return AIMessage(content="" if calls else "done", tool_calls=calls, usage_metadata=self._usage(messages),
                         response_metadata={"model_name": self.name_reported})

    def _generate(self, messages, stop=None, run_manager=None, **kwargs):
        return ChatResult(generations=[ChatGeneration(message=self._reply(messages))])

    def _stream(self, messages, stop=None, run_manager=None, **kwargs) -> Iterator[ChatGenerationChunk]:
        usage = self._usage(messages)
        for word in ("one ", "two ", "three"):
            yield ChatGenerationChunk(message=AIMessageChunk(content=word))
        yield ChatGenerationChunk(message=AIMessageChunk(content="", usage_metadata=usage,
                                                         response_metadata={"model_name": self.name_reported}))


_ids = itertools.count()


class S(TypedDict, total=False):
    q: str
    a: str
    b: str


class Truth:
    """What the fake model really reported, per key (a version, a node), one entry per execution."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.seen: dict = {}

    def add(self, key: Any, t_in: int, t_out: int) -> None:
        with self.lock:
            self.seen.setdefault(key, []).append((t_in, t_out))

    def check(self, stats: Any, key: Any) -> None:
        runs = self.seen[key]
        m = stats.metrics
        assert m["tokens_in"].n == m["tokens_out"].n == len(runs) == stats.n
        assert m["tokens_in"].mean == pytest.approx(sum(r[0] for r in runs) / len(runs), rel=1e-12)
        assert m["tokens_out"].mean == pytest.approx(sum(r[1] for r in runs) / len(runs), rel=1e-12)


def usage_sum(messages: Any) -> tuple:
    """Sum of the usage of ``AIMessage``s (what the node saw)."""
    ai = [m for m in messages if isinstance(m, AIMessage)]
    return sum(m.usage_metadata["input_tokens"] for m in ai), sum(m.usage_metadata["output_tokens"] for m in ai)


@pytest.fixture
def guard():
    g = Guard("memory://", adapter=DictConfigAdapter({"write": {"prompt": "short"}}), flush_interval=60,
              refresh_interval=0)
    yield g
    g.close()


def by_prompt(rng: random.Random, lock: threading.Lock) -> Callable[[Any], tuple]:
    """Tokens in: 40 per prompt word plus noise; out: 100-200, doubled for a "verbose" prompt."""
    def usage(messages):
        prompt = " ".join(m.content for m in messages if isinstance(m, SystemMessage))
        with lock:
            t_in, t_out = 40 * len(prompt.split()) + rng.randint(0, 9), rng.randint(100, 200)
        return t_in, t_out * (2 if "verbose" in prompt else 1)
    return usage


def test_canary_tokens_per_arm_are_what_the_model_reported(guard):
    model = UsageModel(usage=by_prompt(random.Random(1), threading.Lock()))
    truth = Truth()

    def write(state: S) -> S:
        info_version = current_call().version
        replies = [model.invoke([SystemMessage(node_config()["prompt"]), ("user", state["q"])])
                   for _ in range(1 + len(state["q"]) % 3)]  # 1 to 3 model calls per execution
        truth.add(info_version, *usage_sum(replies))
        return {"a": replies[-1].content}

    b = StateGraph(S)
    b.add_node("write", guarded_node(write, guard=guard))
    b.add_edge(START, "write")
    b.add_edge("write", END)
    graph = b.compile()
    for i in range(10):
        graph.invoke({"q": f"q{i}"})
    change = guard.propose("write", {"prompt": "long verbose answer please"}, policy=STAY)
    for i in range(120):
        graph.invoke({"q": "x" * i}, {"configurable": {"thread_id": f"t{i}"}})
    guard.flush()
    truth.check(guard.stats("write", version=change.candidate_version), change.candidate_version)
    truth.check(guard.stats("write", version=change.baseline_version), change.baseline_version)
    base = guard.stats("write", version=change.baseline_version).metrics["tokens_out"].mean
    cand = guard.stats("write", version=change.candidate_version).metrics["tokens_out"].mean
    assert cand > 1.6 * base


def two_branch_graph(guard: Guard, model: UsageModel, truth: Truth, *, is_async: bool) -> Any:
    """``a`` and ``b`` run in the same superstep: ``a`` calls the model twice per execution,
    ``b`` calls it three times from its own thread pool (with the node's config)."""
    def note(name: str, replies: list) -> None:
        truth.add(name, *usage_sum(replies))

    if is_async:
        async def a(state: S) -> S:
            replies = [await model.ainvoke(f"a {state['q']}"), await model.ainvoke(f"a2 {state['q']}")]
            note("a", replies)
            return {"a": "ok"}
    else:
        def a(state: S) -> S:
            replies = [model.invoke(f"a {state['q']}"), model.invoke(f"a2 {state['q']}")]
            note("a", replies)
            return {"a": "ok"}

    def b(state: S, config) -> S:
        with ThreadPoolExecutor(3) as pool:
            replies = list(pool.map(lambda i: model.invoke(f"b{i} {state['q']}", config), range(3)))
        note("b", replies)
        return {"b": "ok"}

    g = StateGraph(S)
    g.add_node("a", guarded_node(a, guard=guard))
    g.add_node("b", guarded_node(b, guard=guard))
    g.add_edge(START, "a")
    g.add_edge(START, "b")
    g.add_edge("a", END)
    g.add_edge("b", END)
    return g.compile()


def random_usage(seed: int) -> Callable[[Any], tuple]:
    rng, lock = random.Random(seed), threading.Lock()

    def usage(messages):
        with lock:
            return rng.randint(1, 1000), rng.randint(1, 1000)
    return usage


def test_concurrent_runs_in_threads_and_parallel_branches_never_mix(guard):
    model = UsageModel(usage=random_usage(2))
    truth = Truth()
    graph = two_branch_graph(guard, model, truth, is_async=False)
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: graph.invoke({"q": str(i)}, {"configurable": {"thread_id": f"t{i}"}}), range(48)))
    guard.flush()
    for node in ("a", "b"):
        truth.check(guard.stats(node), node)
    assert guard.stats("b").n == 48


def test_concurrent_runs_in_asyncio_tasks(guard):
    model = UsageModel(usage=random_usage(3))
    truth = Truth()
    graph = two_branch_graph(guard, model, truth, is_async=True)

    async def main():
        for _ in range(4):
            await asyncio.gather(*(graph.ainvoke({"q": str(i)}) for i in range(8)))

    asyncio.run(main())
    guard.flush()
    for node in ("a", "b"):
        truth.check(guard.stats(node), node)
    assert guard.stats("a").n == 32


@pytest.mark.parametrize("is_async", [False, True])
def test_a_stream_counts_once_also_under_messages_stream_mode(guard, is_async):
    model = UsageModel(usage=lambda m: (11, 23))

    async def anode(state: S) -> S:
        text = "".join([c.content async for c in model.astream("hi")])
        return {"a": text}

    def node(state: S) -> S:
        return {"a": "".join(c.content for c in model.stream("hi"))}

    b = StateGraph(S)
    b.add_node("write", guarded_node(anode if is_async else node, guard=guard))
    b.add_edge(START, "write")
    b.add_edge("write", END)
    graph = b.compile()
    for _ in range(3):
        if is_async:
            async def run():
                return [c async for c in graph.astream({"q": "x"}, stream_mode="messages")]
            chunks = asyncio.run(run())
        else:
            chunks = list(graph.stream({"q": "x"}, stream_mode="messages"))
        assert len(chunks) >= 4
    guard.flush()
    m = guard.stats("write").metrics
    assert (m["tokens_in"].n, m["tokens_in"].mean, m["tokens_out"].mean) == (3, 11, 23)


def test_a_subgraph_counts_for_the_outer_node_and_for_a_guarded_inner_node(guard):
    model = UsageModel(usage=lambda m: (5, 7))

    def inner(state: S) -> S:
        model.invoke("inner")
        return {"b": "ok"}

    def plain(state: S) -> S:
        model.invoke("plain")
        return {}

    sub = StateGraph(S)
    sub.add_node("inner", guarded_node(inner, guard=guard))
    sub.add_node("plain", plain)
    sub.add_edge(START, "inner")
    sub.add_edge("inner", "plain")
    sub.add_edge("plain", END)
    subgraph = sub.compile()

    def outer(state: S) -> S:
        model.invoke("outer")
        return subgraph.invoke(state)

    b = StateGraph(S)
    b.add_node("outer", guarded_node(outer, guard=guard))
    b.add_edge(START, "outer")
    b.add_edge("outer", END)
    graph = b.compile()
    for _ in range(2):
        graph.invoke({"q": "x"})
    guard.flush()
    assert guard.stats("outer").metrics["tokens_in"].mean == 15  # its own call, inner's, plain's: inclusive
    assert guard.stats("inner").metrics["tokens_in"].mean == 5
    assert guard.stats("outer").metrics["tokens_in"].n == 2


def test_prices_give_the_exact_cost_and_a_framework_cost_wins(guard):
    prices = {"fake-small": (2.5, 10.0), "fake-large": (30.0, 60.0)}

    def graph_of(model: UsageModel, target: str, table: Any) -> Any:
        def node(state: S) -> S:
            model.invoke("a")
            model.invoke("b")
            return {}
        b = StateGraph(S)
        b.add_node(target, guarded_node(node, guard=guard, prices=table))
        b.add_edge(START, target)
        b.add_edge(target, END)
        return b.compile()

    graph_of(UsageModel(usage=lambda m: (1000, 300)), "priced", prices).invoke({"q": "x"})
    graph_of(UsageModel(usage=lambda m: (1000, 300), cost=0.25), "billed", PriceTable(prices)).invoke({"q": "x"})
    graph_of(UsageModel(usage=lambda m: (1000, 300), name_reported="other"), "unpriced", prices).invoke({"q": "x"})
    guard.flush()
    assert guard.stats("priced").metrics["cost_usd"].mean == pytest.approx(2 * (1000 * 2.5 + 300 * 10.0) / 1e6,
                                                                           rel=1e-12)
    assert guard.stats("billed").metrics["cost_usd"].mean == pytest.approx(0.5, rel=1e-12)
    assert "cost_usd" not in guard.stats("unpriced").metrics  # a model without a price: no partial cost
    assert guard.stats("unpriced").metrics["tokens_in"].mean == 2000


def test_a_failing_node_records_the_tokens_it_spent(guard):
    model = UsageModel(usage=lambda m: (9, 1))

    def node(state: S) -> S:
        model.invoke("a")
        raise ValueError("bad")

    b = StateGraph(S)
    b.add_node("write", guarded_node(node, guard=guard))
    b.add_edge(START, "write")
    b.add_edge("write", END)
    with pytest.raises(ValueError):
        b.compile().invoke({"q": "x"})
    guard.flush()
    (record,) = guard.store.read_calls("write", limit=10)
    assert (record.outcome, record.metrics) == ("error", {"tokens_in": 9, "tokens_out": 1})


def test_evaluators_of_a_guarded_node_and_of_a_guard_node_land_in_score(guard):
    def write(state: S) -> S:
        return {"a": state["q"] * 2}

    def evaluate(update: dict) -> float:
        return len(update["a"]) / 10

    b = StateGraph(S)
    b.add_node("write", guarded_node(write, guard=guard, evaluate=evaluate))
    b.add_node("draft", guarded_node(write, guard=guard))
    b.add_node("judge", GuardNode(guard, "draft", lambda s: True, evaluate=lambda s: {"score": 0.25, "polite": 1.0}))
    b.add_edge(START, "write")
    b.add_edge("write", "draft")
    b.add_edge("draft", "judge")
    b.add_edge("judge", END)
    graph = b.compile()
    for q in ("a", "bb", "ccc"):
        graph.invoke({"q": q})
    guard.drain()
    score = guard.stats("write").metrics["score"]
    assert (score.n, score.mean) == (3, pytest.approx(0.4))
    draft = guard.stats("draft").metrics
    assert (draft["score"].n, draft["score"].mean, draft["polite"].mean) == (3, 0.25, 1.0)


# -- create_agent + GuardMiddleware -------------------------------------------------------------
agents = pytest.importorskip("langchain.agents")


def test_middleware_records_the_sum_over_model_calls_per_run_with_cost_and_score(guard):
    from langchain.agents import create_agent
    from langchain_core.tools import tool

    from sil_langgraph import GuardMiddleware

    @tool
    def lookup(q: str) -> str:
        """Look something up."""
        return f"fact {q}"

    rng, lock = random.Random(5), threading.Lock()
    truth = Truth()

    def usage(messages):
        with lock:
            return rng.randint(50, 500), rng.randint(5, 50)

    model = UsageModel(usage=usage, tool_turns=2, name_reported="fake-small-2025-01")
    mw = GuardMiddleware(guard, "agent", prices={"fake-small": (1.0, 4.0)},
                         evaluate=lambda state: 0.1 * len(state["messages"]))
    agent = create_agent(model, [lookup], middleware=[mw])

    def run(i: int) -> None:
        out = agent.invoke({"messages": [("user", f"q{i}")]}, {"configurable": {"thread_id": f"t{i}"}})
        truth.add("agent", *usage_sum(out["messages"]))

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(run, range(16)))

    async def arun(i: int) -> None:
        out = await agent.ainvoke({"messages": [("user", f"a{i}")]})
        truth.add("agent", *usage_sum(out["messages"]))

    async def main():
        await asyncio.gather(*(arun(i) for i in range(8)))

    asyncio.run(main())
    guard.drain()
    stats = guard.stats("agent")
    truth.check(stats, "agent")
    runs = truth.seen["agent"]
    expected_cost = sum(t_in * 1.0 + t_out * 4.0 for t_in, t_out in runs) / 1e6 / len(runs)
    assert stats.metrics["cost_usd"].mean == pytest.approx(expected_cost, rel=1e-12)
    # each run: human, 3 AI messages, 2 tool messages
    assert (stats.metrics["score"].n, stats.metrics["score"].mean) == (24, pytest.approx(0.6))
    for record in guard.store.read_calls("agent", limit=100):
        assert record.context_value()["model_calls"] == 3


def test_a_node_before_its_first_change_has_current_call_for_its_own_metrics_and_id():
    """The fast lane of a node no version serves yet still sets current_call(): the node's own
    metrics land on its record and its call id takes feedback (a baseline period loses nothing)."""

    class S(TypedDict, total=False):
        q: int
        call_id: str

    def node(state: S) -> dict:
        call = current_call()
        call.metrics["faithfulness"] = 0.5 + state["q"] / 100
        return {"call_id": call.call_id}

    g = Guard("memory://", flush_interval=0.01)
    builder = StateGraph(S)
    builder.add_node("answer", guarded_node(node, guard=g))
    builder.add_edge(START, "answer")
    builder.add_edge("answer", END)
    graph = builder.compile()
    ids = [graph.invoke({"q": q})["call_id"] for q in range(10)]
    g.feedback(ids[0], metrics={"faithfulness": 1.0})
    g.flush()
    stats = g.stats("answer")
    assert stats.n == 10 and stats.metrics["faithfulness"].n == 10
    truth = [1.0] + [0.5 + q / 100 for q in range(1, 10)]
    assert stats.metrics["faithfulness"].mean == pytest.approx(sum(truth) / 10)
    assert len(set(ids)) == 10
    g.close()
