"""Guard one node of an existing LangGraph graph without changing the node's code.

The graph below is "existing code": a triage function, a compiled research subgraph and a
``reply`` node that reads its style from ``config["configurable"]``, as LangGraph nodes
usually do. We add, from the outside only:

1. ``GuardCallbackHandler``: every execution of the nodes we pick is recorded (latency,
   ok / error; interrupts would be control flow, not errors) - compiled subgraphs and
   other Runnables included.
2. ``ConfigurableAdapter``: the ``reply`` node's config, versioned in the graph's own
   ``BaseStore``, handed to each run in ``configurable``. A harmful style change is rolled
   out as a canary, detected from the recorded outcomes and rolled back; every run after
   that gets the old style again.

Runs offline (no model, no network). Run: python examples/03_langgraph_adapter.py
"""

import operator
import random
import tempfile
from pathlib import Path
from typing import Annotated, TypedDict

from langchain_core.runnables import RunnableConfig
from langgraph.graph import END, START, StateGraph
from langgraph.store.memory import InMemoryStore

from sil_core import Guard, RolloutPolicy, State
from sil_langgraph import guarded_node
from sil_langgraph.adapters import ConfigurableAdapter
from sil_langgraph.callbacks import GuardCallbackHandler

rng = random.Random(3)


# --- the existing graph (unchanged) ---------------------------------------------------------
class Ticket(TypedDict, total=False):
    question: str
    topic: str
    notes: Annotated[list, operator.add]
    answer: str


def triage(state: Ticket):
    return {"topic": "billing" if "invoice" in state["question"] else "product"}


def search_docs(state: Ticket):
    return {"notes": [f"doc about {state['topic']}"]}


research = StateGraph(Ticket)
research.add_node("search_docs", search_docs)
research.add_edge(START, "search_docs")
research.add_edge("search_docs", END)


def reply(state: Ticket, config: RunnableConfig):
    style = config["configurable"].get("style", "plain")
    if style == "terse" and rng.random() < 0.5:  # the new style often drops the citation...
        raise ValueError("answer has no citation")  # ...which the node's own check rejects
    return {"answer": f"[{style}] {state['notes'][-1]}"}


builder = StateGraph(Ticket)
builder.add_node("triage", triage)
builder.add_node("research", research.compile())  # a compiled subgraph: a Runnable
builder.add_node("reply", reply)
builder.add_edge(START, "triage")
builder.add_edge("triage", "research")
builder.add_edge("research", "reply")
builder.add_edge("reply", END)
store = InMemoryStore()
graph = builder.compile(store=store)

# --- the guard, added from outside ------------------------------------------------------------
workdir = Path(tempfile.mkdtemp(prefix="sil-example-03-"))
adapter = ConfigurableAdapter(store=store)  # versions live next to the graph's other data
adapter.set_config("reply", {"style": "friendly"})  # the style the node had so far: version 1
guard = Guard(f"sqlite:///{workdir / 'sil.db'}", adapter=adapter,
              policy=RolloutPolicy(min_calls=20, step_calls=20, horizon=400),
              flush_interval=0.05, refresh_interval=0)
adapter.bind(guard)  # canary arms are served per run through ``configurable``
guarded = graph.with_config(callbacks=[GuardCallbackHandler(guard, nodes={"research", "reply"})])


def handle(i: int) -> bool:
    question = f"question {i} about my invoice" if i % 3 else f"question {i} about the app"
    config = adapter.run_config("reply", thread_id=f"ticket-{i}")  # key: one ticket, one arm
    try:
        guarded.invoke({"question": question}, config)
        return True
    except ValueError:
        return False


print("1. observe the graph as it is")
for i in range(100):
    handle(i)
for node in ("research", "reply"):
    s = guard.stats(node)
    print(f"   {node:<9} calls={s.n:<4} success={s.success_rate:.0%}  p50={s.p50_s * 1e3:.2f} ms")

print("2. roll a new reply style out as a canary")
change = guard.propose("reply", {"style": "terse"}, mode="canary")
print(f"   change {change.candidate_version} over {change.baseline_version}, "
      f"first {change.weight:.0%} of tickets on the candidate")
for i in range(100, 2100):
    handle(i)
    if i % 20 == 19:
        guard.evaluate("reply")
        change = guard.change("reply")
        if change.state not in (State.CANARY, State.PAUSED):
            break
guard.flush()
arms: dict = {}
for record in guard.store.read_calls("reply", limit=10_000):
    if record.arm:
        counts = arms.setdefault(record.arm, [0, 0])
        counts[0] += 1
        counts[1] += record.success is False
for arm, (n, failed) in sorted(arms.items()):
    print(f"   {arm:<9} served {n:>3} runs, {failed} failed")
print(f"   verdict: {change.state} - {change.reason}")
assert change.state == State.ROLLED_BACK, change

print("3. after the rollback, every run gets the old style again")
styles = {adapter.run_config("reply", thread_id=f"after-{i}")["configurable"]["style"] for i in range(50)}
print(f"   styles served to 50 new tickets: {sorted(styles)}")
assert styles == {"friendly"}

print("4. a harmless style change is promoted")
change = guard.propose("reply", {"style": "warm"}, mode="canary")
i = 10_000
while change.state in (State.CANARY, State.PAUSED) and i < 20_000:
    handle(i)
    i += 1
    if i % 20 == 0:
        guard.evaluate("reply")
        change = guard.change("reply")
print(f"   verdict after {i - 10_000} tickets: {change.state} - {change.reason}")
assert change.state == State.PROMOTED, change
print(f"   new tickets now get style {adapter.configurable('reply')['style']!r}")
print("   config history kept in the graph's own store (the promotion moved the pointer):")
for move in adapter.history("reply"):
    print(f"     {move['action']:<8} {move['previous'] or '(none)':<14} -> {move['version']}")
for version in adapter.versions("reply"):
    print(f"     stored version {version['version']}: {version['config']}")

report = guard.verify_trail()
print(f"5. trail: {report.events} events, hash chain {'intact' if not report.problems else report.problems}")
assert not report.problems
guard.close()

# --- the same node, wrapped instead of observed ----------------------------------------------
# ``guarded_node`` wraps the function itself (still unchanged): LangGraph keeps injecting
# ``config``, and the wrapper can serve a canary arm's config to each execution.
with Guard("memory://") as wrap_guard:
    wrapped = StateGraph(Ticket)
    wrapped.add_node("triage", triage)
    wrapped.add_node("research", research.compile())
    wrapped.add_node("reply", guarded_node(reply, guard=wrap_guard))
    wrapped.add_edge(START, "triage")
    wrapped.add_edge("triage", "research")
    wrapped.add_edge("research", "reply")
    wrapped.add_edge("reply", END)
    app = wrapped.compile()
    for i in range(20):
        app.invoke({"question": f"question {i}"}, {"configurable": {"style": "friendly"}})
    s = wrap_guard.stats("reply")
    print(f"6. the same node wrapped with guarded_node: {s.n} calls, success {s.success_rate:.0%}")
