"""The LangGraph regression guard, end to end: a prompt change that breaks the agent is caught
on a canary and rolled back; a harmless one is promoted; every decision is on a verifiable trail.

The graph is a small support agent:

    START -> retrieve -> write -> check --ok--> END
                                       \\-fallback-> fallback -> END

* ``write`` is a guarded node (``guarded_node``). It calls a chat model with the system
  prompt of the config version serving this thread (``node_config()``); during a canary one
  thread gets one arm, baseline or candidate.
* The chat model is a fake built on langchain-core's ``SimpleChatModel`` (no network): like a
  real model, it follows the system prompt; when asked to cite, it nearly always ends with a
  "Source:" line, otherwise it usually does not.
* ``check`` is a ``GuardNode``: an answer without a "Source:" line "ran but produced garbage".
  The verdict counts against the version and arm that wrote the answer, and ``check.route``
  sends a failing answer to a safe fallback.
* The node's config lives in the graph's own store (``StoreConfigAdapter``); the guard keeps
  its records and trail in an embedded SQLite file.

It ends by writing the report of its store (``sil report``): one self-contained HTML page.

Run: python examples/05_langgraph_regression_guard.py   (or ``make demo``)
"""

import random
import tempfile
import time
from pathlib import Path
from typing import Any, List, Optional, TypedDict

from langchain_core.language_models import SimpleChatModel
from langchain_core.messages import BaseMessage, HumanMessage, SystemMessage
from langgraph.graph import END, START, StateGraph
from langgraph.store.memory import InMemoryStore

from sil_core import Guard, RolloutPolicy, State
from sil_core.report import write_report
from sil_langgraph import GuardNode, StoreConfigAdapter, guarded_node, node_config

TARGET = "write"
BASELINE = {"system_prompt": "Answer in two sentences. Always end with 'Source: <doc id>'.", "temperature": 0.2}
HARMFUL = {"system_prompt": "Answer in one friendly sentence. Skip the boilerplate."}
HARMLESS = {"system_prompt": "Answer warmly in two sentences. Always end with 'Source: <doc id>'."}


class RuleFollowingChatModel(SimpleChatModel):
    """A fake chat model: cites its source with p=0.97 when the system prompt asks for a
    source, with p=0.30 otherwise."""

    seed: int = 5
    rng: Any = None

    @property
    def _llm_type(self) -> str:
        return "rule-following-fake"

    def _call(self, messages: List[BaseMessage], stop: Optional[List[str]] = None, **kwargs: Any) -> str:
        if self.rng is None:
            self.rng = random.Random(self.seed)
        system = " ".join(m.content for m in messages if isinstance(m, SystemMessage))
        question = messages[-1].content
        time.sleep(0.0005)  # a (very fast) model call
        answer = f"Here is what to do about {question.lower()}."
        if self.rng.random() < (0.97 if "Source:" in system else 0.30):
            answer += " Source: kb-42"
        return answer


class Ticket(TypedDict, total=False):
    question: str
    docs: list
    answer: str
    fallback: bool


model = RuleFollowingChatModel()


def retrieve(state: Ticket) -> Ticket:
    return {"docs": ["kb-42"]}


def write(state: Ticket) -> Ticket:
    config = node_config()  # the baseline's or the candidate's, the same for the whole thread
    reply = model.invoke([SystemMessage(config["system_prompt"]), HumanMessage(state["question"])])
    return {"answer": reply.content}


def fallback(state: Ticket) -> Ticket:
    return {"answer": "A colleague will get back to you shortly. Source: kb-00", "fallback": True}


# --- the guard and the graph ---------------------------------------------------------------
workdir = Path(tempfile.mkdtemp(prefix="sil-example-05-"))
graph_store = InMemoryStore()
adapter = StoreConfigAdapter(graph_store)  # node config versions live in the graph's store
baseline_version = adapter.set_config(TARGET, BASELINE)
guard = Guard(f"sqlite:///{workdir / 'sil.db'}", adapter=adapter,
              # tolerate at most 5 points of success rate and 20 % of latency; decide within 800 calls
              policy=RolloutPolicy(min_calls=30, success_tolerance=0.05, ramp=(0.25, 0.5), step_calls=30,
                                   horizon=800),
              flush_interval=0.05, refresh_interval=0.05)
check = GuardNode(guard, TARGET, lambda state: "Source:" in state.get("answer", ""), name="check")

builder = StateGraph(Ticket)
builder.add_node("retrieve", retrieve)
builder.add_node(TARGET, guarded_node(write, guard=guard))
builder.add_node("check", check)
builder.add_node("fallback", fallback)
builder.add_edge(START, "retrieve")
builder.add_edge("retrieve", TARGET)
builder.add_edge(TARGET, "check")
builder.add_conditional_edges("check", check.route, {"ok": END, "fallback": "fallback"})
builder.add_edge("fallback", END)
graph = builder.compile(store=graph_store)

served_fallback = 0
ticket = 0


def handle_tickets(n: int, *, until_decided: bool = False) -> int:
    """Run ``n`` tickets, one thread each; stop early once the change in flight is decided."""
    global served_fallback, ticket
    for i in range(n):
        ticket += 1
        out = graph.invoke({"question": f"Ticket {ticket}: my export fails"},
                           {"configurable": {"thread_id": f"t-{ticket}"}})
        served_fallback += bool(out.get("fallback"))
        if until_decided and i % 10 == 9:
            guard.flush()
            guard.drain()
            if not guard.change(TARGET).in_flight:
                return i + 1
    return n


def arm_counts(change_id_since: float) -> dict:
    """Calls per arm (and how many the check failed) since a change started."""
    guard.flush()
    counts: dict = {}
    for record in guard.store.read_calls(TARGET, since=change_id_since, limit=100_000):
        if record.arm:
            served = counts.setdefault(record.arm, [0, 0])
            served[0] += 1
            served[1] += record.success is False
    return counts


def describe(change: Any) -> None:
    """The verdict and the evidence it rests on."""
    verdict = change.verdict
    ev = verdict.evidence
    print(f"   verdict: {verdict.kind} ({verdict.metric or 'every metric'}): {verdict.reason}")
    sr = ev.get("success_rate")
    if sr:
        print(f"     success rate: baseline {sr['baseline']:.1%} (n={ev['n']['baseline']}), candidate "
              f"{sr['candidate']:.1%} (n={ev['n']['candidate']}); difference {sr['diff']:+.1%}, "
              f"anytime-valid interval [{sr['lower']:+.1%}, {sr['upper']:+.1%}], "
              f"tolerance -{sr['tolerance']:.0%}")
    lat = ev.get("latency")
    if lat:
        print(f"     median latency ratio candidate/baseline {lat['ratio']:.3f} "
              f"[{lat['ratio_lower']:.3f}, {lat['ratio_upper']:.3f}], tolerance +{lat['tolerance']:.0%}")
    print(f"     test: {ev.get('test')}")


print(f"sil-guard LangGraph regression guard (records in {workdir / 'sil.db'})")
print(f"1. baseline: version {baseline_version} of '{TARGET}' serves 200 tickets")
handle_tickets(200)
stats = guard.stats(TARGET)
print(f"   {stats.n} calls, success {stats.success_rate:.1%} (GuardNode check: answer cites a source), "
      f"p50 {stats.p50_s * 1e3:.2f} ms")

print("2. a prompt change that drops the citation, rolled out as a canary")
started = time.time()
change = guard.propose(TARGET, HARMFUL)
print(f"   candidate {change.candidate_version} over baseline {change.baseline_version}, "
      f"first {change.weight:.0%} of threads on the candidate")
used = handle_tickets(2000, until_decided=True)
change = guard.change(TARGET)
for arm, (n, failed) in sorted(arm_counts(started).items()):
    print(f"   {arm:<9} served {n:>4} tickets, {failed} failed the check")
describe(change)
print(f"   detected after {used} tickets; {served_fallback} failing answers went to the fallback node")
assert change.state == State.ROLLED_BACK, change
assert adapter.active_version(TARGET) == baseline_version and adapter.get_config(TARGET) == BASELINE
handle_tickets(50)
guard.flush()
served_after = sorted({r.version for r in guard.store.read_calls(TARGET, limit=50)})
assert served_after == [baseline_version], served_after
print(f"   rolled back: the next 50 tickets all ran on {served_after[0]}; the graph store's active "
      f"config is still the baseline (a canary serves the candidate without applying it)")

print("3. a harmless rewording, rolled out the same way")
started = time.time()
change = guard.propose(TARGET, HARMLESS)
used = handle_tickets(3000, until_decided=True)
change = guard.change(TARGET)
for arm, (n, failed) in sorted(arm_counts(started).items()):
    print(f"   {arm:<9} served {n:>4} tickets, {failed} failed the check")
describe(change)
assert change.state == State.PROMOTED, change
print(f"   promoted after {used} tickets: new threads get version {adapter.active_version(TARGET)}")

print("4. the trail")
for event in guard.trail(TARGET):
    data = event["data"]
    if "verdict" in data:
        detail = data["verdict"]["reason"]
    elif "patch" in data:
        detail = f"{data['candidate_version']} over {data['baseline_version']}: {data['patch']}"
    elif "weight" in data:
        detail = f"candidate weight {data['weight']:.0%}"
    else:
        detail = ", ".join(f"{k}={v}" for k, v in data.items())
    print(f"   {event['seq']:>2} {event['type']:<19} {detail[:92]}")
report = guard.verify_trail()
print(f"   {report.events} events, hash chain {'verified' if report.ok else report.problems}")
assert report.ok
print("   config history in the graph store:")
for move in adapter.history(TARGET):
    print(f"     {move['action']:<8} {move['previous'] or '(none)':<14} -> {move['version']}")

print("5. the report: one HTML page, open it in any browser (no network needed)")
written = write_report(guard, workdir / "report.html")
print(f"   {written['path']} ({written['bytes'] / 1024:.0f} KiB); `sil report --store "
      f"sqlite:///{workdir / 'sil.db'}` writes it again")
guard.close()
