"""Quality and cost guardrails on a LangGraph agent: a prompt change that never fails a call,
yet doubles the tokens or lowers the answers' quality, is caught and rolled back.

* ``answer`` is a guarded node calling a fake chat model (no network) that reports its token
  usage like a real one (``usage_metadata``). The guard sums it into each execution's
  ``tokens_in`` / ``tokens_out`` and, with ``prices=``, its ``cost_usd``.
* ``evaluate=`` scores each answer off the hot path (how many of the five facts it covers):
  the execution's ``score``.
* The default guardrails judge them during a canary: tokens and cost may grow by 20 % at
  most, the score may drop by 0.05 at most. Every call succeeds all along.

Run: python examples/08_quality_and_cost_guard.py
"""

import random
import threading
from typing import Any, TypedDict

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langgraph.graph import END, START, StateGraph

from sil_core import DictConfigAdapter, Guard, RolloutPolicy, State
from sil_langgraph import guarded_node, node_config

TARGET = "answer"
FACTS = ("reset the token", "check the quota", "retry after 60 s", "update the client", "contact support")
BASELINE = {"system_prompt": "Answer with the five steps, one line each."}
VERBOSE = {"system_prompt": "Answer with the five steps and explain the background of each at length."}
LOOSE = {"system_prompt": "Answer with the main steps, one line each."}
PRICES = {"fake-mini": (0.15, 0.60)}  # USD per million tokens in, out


class FakeChatModel(BaseChatModel):
    """Covers each fact with p=0.95 (0.75 when told to explain at length or to be loose);
    "at length" doubles the answer. Reports the tokens it would have used."""

    rng: Any = None
    lock: Any = None

    @property
    def _llm_type(self) -> str:
        return "fake"

    def _generate(self, messages, stop=None, run_manager=None, **kwargs):
        system = " ".join(m.content for m in messages if isinstance(m, SystemMessage))
        with self.lock:
            p = 0.75 if ("at length" in system or "main steps" in system) else 0.95
            covered = [fact for fact in FACTS if self.rng.random() < p]
            padding = self.rng.randint(90, 130) * (2 if "at length" in system else 1)
        text = "; ".join(covered) + "." + " More detail." * (padding // 3)
        tokens_in = sum(len(str(m.content).split()) for m in messages) + 400  # the prompt and its context
        usage = {"input_tokens": tokens_in, "output_tokens": padding + 4 * len(covered),
                 "total_tokens": tokens_in + padding + 4 * len(covered)}
        message = AIMessage(content=text, usage_metadata=usage, response_metadata={"model_name": "fake-mini"})
        return ChatResult(generations=[ChatGeneration(message=message)])


class Ticket(TypedDict, total=False):
    question: str
    answer: str


model = FakeChatModel(rng=random.Random(8), lock=threading.Lock())


def answer(state: Ticket) -> Ticket:
    reply = model.invoke([SystemMessage(node_config()["system_prompt"]), HumanMessage(state["question"])])
    return {"answer": reply.content}


def coverage(update: dict) -> float:
    """The evaluator (an LLM judge in real life): the share of the five facts the answer covers."""
    return sum(fact in update["answer"] for fact in FACTS) / len(FACTS)


guard = Guard("memory://", adapter=DictConfigAdapter({TARGET: BASELINE}),
              policy=RolloutPolicy(min_calls=30, ramp=(0.5,), step_calls=10_000, horizon=3000),
              flush_interval=0.05, refresh_interval=0)
builder = StateGraph(Ticket)
builder.add_node(TARGET, guarded_node(answer, guard=guard, evaluate=coverage, prices=PRICES))
builder.add_edge(START, TARGET)
builder.add_edge(TARGET, END)
graph = builder.compile()
tickets = 0


def run(n: int, *, until_decided: bool = False) -> int:
    """Serve ``n`` tickets, one thread each; stop once the change in flight is decided."""
    global tickets
    for i in range(n):
        tickets += 1
        graph.invoke({"question": f"Ticket {tickets}: API calls fail"}, {"configurable": {"thread_id": f"t{tickets}"}})
        if until_decided and i % 20 == 19:
            guard.drain()  # the evaluators' scores are in
            if not guard.change(TARGET).in_flight:
                return i + 1
    return n


def describe(change: Any, used: int) -> None:
    """The verdict and the evidence it rests on: per metric, both arms, the bound, the tolerance."""
    verdict = change.verdict
    print(f"   {change.state} after {used} tickets; verdict {verdict.kind} on {verdict.metric}: {verdict.reason}")
    for name, m in verdict.evidence.get("metrics", {}).items():
        if m["relative"]:
            bound = m["ratio_lower"] if m["better"] == "lower" else m["ratio_upper"]
            print(f"     {name:<10} baseline {m['baseline']:.4g}, candidate {m['candidate']:.4g} ({m['estimate']}, "
                  f"n={m['n']['baseline']}/{m['n']['candidate']}): ratio {m['ratio']:.3f}, "
                  f"{'lower' if m['better'] == 'lower' else 'upper'} bound {bound:.3f}, "
                  f"tolerance +{m['tolerance']:.0%}")
        else:
            bound = m["upper"] if m["better"] == "higher" else m["lower"]
            print(f"     {name:<10} baseline {m['baseline']:.3f}, candidate {m['candidate']:.3f} ({m['estimate']}, "
                  f"n={m['n']['baseline']}/{m['n']['candidate']}): difference {m['diff']:+.3f}, "
                  f"{'upper' if m['better'] == 'higher' else 'lower'} bound {bound:+.3f}, tolerance {m['tolerance']:g}")
    arms = [guard.stats(TARGET, version=v).metrics for v in (change.baseline_version, change.candidate_version)]
    print(f"     per arm (baseline / candidate): tokens out {arms[0]['tokens_out'].mean:.0f} / "
          f"{arms[1]['tokens_out'].mean:.0f}, score {arms[0]['score'].mean:.3f} / {arms[1]['score'].mean:.3f}")
    success = guard.stats(TARGET, version=change.candidate_version).success_rate
    print(f"     every call succeeded: success rate {success:.0%} on the candidate; test: {verdict.evidence.get('test')}")


print("1. baseline: 100 tickets")
run(100)
guard.drain()
m = guard.stats(TARGET).metrics
print(f"   tokens in {m['tokens_in'].mean:.0f}, out {m['tokens_out'].mean:.0f}, cost ${m['cost_usd'].mean:.6f}, "
      f"score {m['score'].mean:.3f} per call (n={m['score'].n})")

for title, patch in (("2. a prompt that explains at length (twice the tokens, lower coverage)", VERBOSE),
                     ("3. a prompt that asks for the main steps only (same tokens, lower coverage)", LOOSE)):
    print(title)
    guard.propose(TARGET, patch)
    used = run(3000, until_decided=True)
    change = guard.change(TARGET)
    describe(change, used)
    assert change.state == State.ROLLED_BACK, change
guard.close()
