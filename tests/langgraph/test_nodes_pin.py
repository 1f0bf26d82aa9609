"""Pinning a thread interrupted before its target's first change: the version it ran with
is the content hash of the adapter's config, stored so the resumed execution is served it."""

from typing import TypedDict

import pytest
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, StateGraph
from langgraph.types import Command, interrupt

from sil_core import DictConfigAdapter, Guard
from sil_core.versions import config_version, get_version
from sil_langgraph import add_guarded_node, node_config


class S(TypedDict, total=False):
    x: int
    out: str


def _graph(g, seen):
    def draft(state: S) -> S:
        prompt = node_config()["prompt"]
        seen.append(prompt)
        approved = interrupt(f"approve draft made with {prompt}?")
        return {"out": f"{prompt}:{approved}"}

    b = StateGraph(S)
    add_guarded_node(b, "draft", draft, guard=g)
    b.add_edge(START, "draft")
    b.add_edge("draft", END)
    return b.compile(checkpointer=InMemorySaver())


@pytest.mark.parametrize("refresh", [0, 60], ids=["general-path", "fast-lane"])
@pytest.mark.parametrize("mode", ["canary", "switch"])
def test_a_thread_interrupted_before_the_first_change_keeps_the_old_config(refresh, mode):
    adapter = DictConfigAdapter({"draft": {"prompt": "v1"}})
    with Guard("memory://", adapter=adapter, flush_interval=60, refresh_interval=refresh) as g:
        seen = []
        graph = _graph(g, seen)
        graph.invoke({"x": 0}, {"configurable": {"thread_id": "warm"}})  # registers the node (fast lane)
        cfg = {"configurable": {"thread_id": "approve-me"}}
        graph.invoke({"x": 1}, cfg)  # interrupted on the adapter's config: no version yet
        assert seen[-1] == "v1"
        g.propose("draft", {"prompt": "v2"}, mode=mode)
        if mode == "canary":
            assert g.promote("draft")
        assert adapter.configs["draft"] == {"prompt": "v2"}
        out = graph.invoke(Command(resume="yes"), cfg)
        assert out["out"] == "v1:yes"  # approved with v1, finished with v1
        assert seen[-1] == "v1"
        g.flush()
        old = config_version({"prompt": "v1"})
        assert get_version(g.store, "draft", old) == {"prompt": "v1"}
        done = [r for r in g.store.read_calls("draft", limit=100) if r.outcome == "ok"]
        assert [r.version for r in done] == [old]  # the resumed execution's record names it
        # the pin is spent: a new run of the thread is served the promoted config
        graph.invoke({"x": 2}, cfg)
        assert seen[-1] == "v2"


def test_without_an_adapter_nothing_is_pinned_and_resume_still_works():
    with Guard("memory://", flush_interval=60, refresh_interval=0) as g:
        def ask(state: S) -> S:
            return {"out": interrupt("ok?")}

        b = StateGraph(S)
        add_guarded_node(b, "ask", ask, guard=g)
        b.add_edge(START, "ask")
        b.add_edge("ask", END)
        graph = b.compile(checkpointer=InMemorySaver())
        cfg = {"configurable": {"thread_id": "t"}}
        graph.invoke({"x": 1}, cfg)
        assert graph.invoke(Command(resume="yes"), cfg)["out"] == "yes"
        assert g.store.kv_list("pin") == [] or all(not v for _, v, _ in g.store.kv_list("pin"))
