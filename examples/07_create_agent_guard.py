"""A LangChain v1 agent (``create_agent``) guarded run by run with ``GuardMiddleware``.

* The agent looks an order up with a tool (two tool turns), then answers. Its chat model is a
  fake (no network) that follows the system prompt: asked to quote the order id, it does so
  97 % of the time; otherwise 30 %.
* ``GuardMiddleware(guard, "support-agent", check=...)`` records one call per agent run (the
  whole loop of model and tool turns), judged by ``check`` on the final state, and serves
  each run the system prompt of its arm during a canary.
* A prompt change that drops the instruction is proposed as a 50 % canary: it is caught and
  rolled back. Then a run interrupted by ``HumanInTheLoopMiddleware`` is resumed after the
  rollback: it keeps the version it started with and is recorded once.

Run: python examples/07_create_agent_guard.py
"""

import itertools
import random
from typing import Any

from langchain.agents import create_agent
from langchain.agents.middleware import HumanInTheLoopMiddleware
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, SystemMessage, ToolMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.tools import tool
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.types import Command

from sil_core import DictConfigAdapter, Guard, RolloutPolicy
from sil_langgraph import GuardMiddleware

TARGET = "support-agent"
BASELINE = {"system_prompt": "Look the order up, then answer and quote the order id."}
HARMFUL = {"system_prompt": "Look the order up, then answer in a friendly way."}
ids = itertools.count()


class RuleFollowingChatModel(BaseChatModel):
    """Two lookups, then an answer that quotes the order id with p=0.97 when told to, else 0.30."""

    rng: Any = None

    @property
    def _llm_type(self) -> str:
        return "rule-following-fake"

    def bind_tools(self, tools: Any, **kwargs: Any) -> Any:
        return self

    def _generate(self, messages, stop=None, run_manager=None, **kwargs):
        self.rng = self.rng or random.Random(7)
        start = max(i for i, m in enumerate(messages) if m.type == "human")
        lookups = sum(isinstance(m, ToolMessage) for m in messages[start:])
        if lookups < 2:
            msg = AIMessage(content="", tool_calls=[{"name": "lookup_order", "args": {"order": "A-17"},
                                                     "id": f"call{next(ids)}"}])
        else:
            prompt = " ".join(m.content for m in messages if isinstance(m, SystemMessage))
            quote = self.rng.random() < (0.97 if "quote the order id" in prompt else 0.30)
            msg = AIMessage(content="Order A-17 ships tomorrow." if quote else "It ships tomorrow!")
        return ChatResult(generations=[ChatGeneration(message=msg)])


@tool
def lookup_order(order: str) -> str:
    """Look an order up."""
    return f"{order}: paid, ships tomorrow"


def quotes_the_order(state: dict) -> bool:
    return "A-17" in state["messages"][-1].content


guard = Guard("memory://", adapter=DictConfigAdapter({TARGET: BASELINE}),
              policy=RolloutPolicy(min_calls=20, step_calls=1000, ramp=(0.5,)), refresh_interval=0)
middleware = GuardMiddleware(guard, TARGET, check=quotes_the_order)
agent = create_agent(RuleFollowingChatModel(), [lookup_order], middleware=[middleware])

for i in range(20):
    agent.invoke({"messages": [("user", f"Where is my order? ({i})")]})
guard.flush()
print(f"baseline: {guard.stats(TARGET).n} agent runs recorded (each: 3 model calls, 2 tool calls), "
      f"success {guard.stats(TARGET).success_rate:.0%}")

change = guard.propose(TARGET, HARMFUL)
print(f"proposed {change.candidate_version} as a 50 % canary")
for i in range(300):
    agent.invoke({"messages": [("user", f"Where is my order? (canary {i})")]})
    if i % 10 == 9:
        guard.flush()
        if guard.change(TARGET).state != "canary":
            break
change = guard.change(TARGET)
print(f"after {i + 1} canary runs: {change.state}"
      + (f" ({change.reason})" if change.reason else ""))
for arm, version in (("baseline", change.baseline_version), ("candidate", change.candidate_version)):
    s = guard.stats(TARGET, version=version)
    print(f"  {arm:<9} {version}: {s.n} runs, success {s.success_rate:.0%}")

# Human in the loop: the run is interrupted before the tool call and resumed later
proposal = guard.propose(TARGET, {"system_prompt": BASELINE["system_prompt"] + " Be warm."}, mode="switch")
hitl = create_agent(RuleFollowingChatModel(), [lookup_order], checkpointer=InMemorySaver(),
                    middleware=[GuardMiddleware(guard, TARGET, check=quotes_the_order),
                                HumanInTheLoopMiddleware(interrupt_on={"lookup_order": True})])
config = {"configurable": {"thread_id": "ticket-1"}}
out = hitl.invoke({"messages": [("user", "Where is order A-17?")]}, config)
print(f"interrupted for approval ({'__interrupt__' in out}); served {proposal.candidate_version}")
guard.rollback(TARGET, reason="demo: rolled back while a human was deciding")
before = guard.stats(TARGET, version=proposal.candidate_version).n
for _ in range(2):  # two approvals: one per lookup
    out = hitl.invoke(Command(resume={"decisions": [{"type": "approve"}]}), config)
guard.flush()
after = guard.stats(TARGET, version=proposal.candidate_version).n
print(f"resumed after the rollback: {out['messages'][-1].content!r}; "
      f"recorded {after - before} run on {proposal.candidate_version} (the version it started with)")
guard.close()
