#!/usr/bin/env python3
"""How much time a guarded LangGraph node adds per node call, next to LangGraph's own cost.

Graphs, all compiled in one process and measured in one run:

* ``bare``: a linear ``StateGraph`` of ``--nodes`` nodes (20 by default); each node is a
  plain function returning a one-key update, the cheapest node LangGraph can run;
* ``guarded``: the same graph with every node wrapped by ``guarded_node`` (one target per
  node) on a ``Guard`` over an embedded SQLite file in a temporary folder (the default store);
* ``guarded-canary``: ``guarded`` with a config change in flight on every node (a canary at
  50 %, observe-only so it never ends): each execution is routed by thread id, served its
  arm's config through ``node_config()``, and judged in the background;
* ``callback``: the bare graph observed by ``GuardCallbackHandler`` (no wrapping);
* ``noop-wrapper``: every node wrapped by a do-nothing ``functools.wraps`` wrapper, the
  floor any Python-level wrapper pays in a running graph (for scale);
* ``one-node``: a bare graph of one node, to separate LangGraph's fixed cost per ``invoke``
  from its cost per node.

``middleware`` (``results["middleware"]``): a ``langchain.agents.create_agent`` graph with a
fake chat model (no network) that makes one tool call then answers (2 model calls, 1 tool
call per run), bare and with ``GuardMiddleware`` (one record per agent run), without a change
(``guard-middleware``) and with a 50 % observe-only canary on the system prompt
(``guard-middleware-canary``); paired like the graphs above, per agent run. Skipped when
``langchain`` is not installed.

Method (paired, interleaved): each round visits every variant in a shuffled order and
runs ``--invokes`` pairs of invocations, one of the variant and one of the bare graph
back to back (which goes first is random), so each pair sees the same machine state. A
pair's added time per node call is ``(variant invoke - bare invoke) / nodes``; the
reported figure is the median over every pair of every round, with a distribution-free
95 % interval. ``guard.flush()`` runs after each round of a guarded variant, outside the
timing; ``added_with_flush_us`` also charges that flush to the round's node calls, i.e.
the whole CPU cost of recording them. LangGraph's own cost per node is
``(bare 20-node invoke - one-node invoke) / 19``, from the same pairs.

A graph's per-node cost (hundreds of µs on this machine) swamps a few µs, so the paired
graph numbers have wide intervals. ``in_node`` measures the wrapper alone, where LangGraph
runs it: inside a real node (LangGraph's config and runtime in context), a block of
``guarded_node(f)`` calls is timed next to a block of ``f`` calls, ``f`` being the cheapest
node body; the records go to the same kind of Guard and are flushed outside the timing.

Run: ``python benchmarks/langgraph_overhead.py [--json] [--quick] [--nodes N]``
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, TypedDict

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import loadavg, log, machine_info, median, median_ci95, package_version  # noqa: E402

from langgraph.graph import END, START, StateGraph  # noqa: E402

from sil_core import Guard, RolloutPolicy  # noqa: E402
from sil_core.adapters import DictConfigAdapter  # noqa: E402
from sil_langgraph import GuardCallbackHandler, guarded_node, node_config  # noqa: E402

VARIANTS = ("guarded", "guarded-canary", "callback", "noop-wrapper", "one-node")
ADDED = ("guarded", "guarded-canary", "callback", "noop-wrapper")
TARGET_NOTE = "target: <= 2 us added per node call (median)"


class S(TypedDict, total=False):
    x: int


def make_node(i: int, read_config: bool = False) -> Callable[[S], S]:
    if read_config:
        def node(state: S) -> S:
            node_config()
            return {"x": i}
    else:
        def node(state: S) -> S:
            return {"x": i}
    node.__name__ = node.__qualname__ = f"n{i}"
    return node


def noop_wrapper(fn: Callable, name: str) -> Callable:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs)

    return wrapper


def build(nodes: int, wrap: Callable[[Callable, str], Callable] | None = None, read_config: bool = False) -> Any:
    b = StateGraph(S)
    prev = START
    for i in range(nodes):
        name = f"n{i}"
        fn = make_node(i, read_config)
        b.add_node(name, wrap(fn, name) if wrap else fn)
        b.add_edge(prev, name)
        prev = name
    b.add_edge(prev, END)
    return b.compile()


def pair(variant: Any, bare: Any, config: dict, variant_first: bool) -> tuple[float, float]:
    """``(variant seconds, bare seconds)`` of one invocation each, back to back."""
    inputs = {"x": 0}
    perf = time.perf_counter
    if variant_first:
        t0 = perf()
        variant.invoke(inputs, config)
        t1 = perf()
        bare.invoke(inputs, config)
        t2 = perf()
        return t1 - t0, t2 - t1
    t0 = perf()
    bare.invoke(inputs, config)
    t1 = perf()
    variant.invoke(inputs, config)
    t2 = perf()
    return t2 - t1, t1 - t0


def run(nodes: int, invokes: int, rounds: int, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    workdir = Path(tempfile.mkdtemp(prefix="sil-bench-lg-"))
    try:
        guard = Guard(f"sqlite:///{workdir / 'guarded.db'}")
        adapter = DictConfigAdapter({f"n{i}": {"prompt": "v1"} for i in range(nodes)})
        canary = Guard(f"sqlite:///{workdir / 'canary.db'}", adapter=adapter,
                       policy=RolloutPolicy(observe_only=True, ramp=(0.5,), horizon=10**9))
        for i in range(nodes):
            canary.propose(f"n{i}", {"prompt": "v2"})
        observer = Guard(f"sqlite:///{workdir / 'callback.db'}")
        graphs = {
            "bare": build(nodes),
            "guarded": build(nodes, lambda fn, name: guarded_node(fn, guard=guard)),
            "guarded-canary": build(nodes, lambda fn, name: guarded_node(fn, guard=canary), read_config=True),
            "callback": build(nodes).with_config(callbacks=[GuardCallbackHandler(observer)]),
            "noop-wrapper": build(nodes, noop_wrapper),
            "one-node": build(1),
        }
        guards = {"guarded": guard, "guarded-canary": canary, "callback": observer}
        threads = [{"configurable": {"thread_id": f"t{i}"}} for i in range(invokes)]
        for name, graph in graphs.items():  # warm up: imports, caches, first SQLite writes
            for config in threads[: max(10, invokes // 5)]:
                graph.invoke({"x": 0}, config)
            if name in guards:
                guards[name].flush()

        pairs: dict[str, list[tuple[float, float]]] = {v: [] for v in VARIANTS}
        flushes: dict[str, list[float]] = {v: [] for v in VARIANTS}
        for r in range(rounds):
            order = list(VARIANTS)
            rng.shuffle(order)
            for variant in order:
                gc.collect()
                gc.disable()
                try:
                    for config in threads:
                        pairs[variant].append(pair(graphs[variant], graphs["bare"], config, rng.random() < 0.5))
                finally:
                    gc.enable()
                flushes[variant].append(_timed_flush(guards.get(variant)))
            log(f"round {r + 1}/{rounds} done")

        result: dict[str, Any] = {}
        for variant in ADDED:
            added = [(t - bare) / nodes * 1e6 for t, bare in pairs[variant]]
            flush_per_node = median(flushes[variant]) / (invokes * nodes) * 1e6
            result[variant] = {
                "added_us_median": round(median(added), 3),
                "added_us_ci95": [round(x, 3) for x in median_ci95(added) or []] or None,
                "added_with_flush_us_median": round(median(added) + flush_per_node, 3),
                "bare_graph_us_per_node_median": round(median([bare / nodes * 1e6 for _, bare in pairs[variant]]), 3),
                "ratio_to_bare_median": round(median([t / bare for t, bare in pairs[variant]]), 4),
                "pairs": len(added),
            }
        one = pairs["one-node"]
        own = [(bare - t) / (nodes - 1) * 1e6 for t, bare in one]
        result["langgraph"] = {
            "per_node_us_median": round(median(own), 3),
            "per_node_us_ci95": [round(x, 3) for x in median_ci95(own) or []] or None,
            "one_node_invoke_us_median": round(median([t * 1e6 for t, _ in one]), 3),
            "bare_invoke_us_median": round(median([bare * 1e6 for _, bare in one]), 3),
        }
        for g in guards.values():
            g.close()
        return result
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def in_node(calls: int, rounds: int, seed: int) -> dict[str, Any]:
    """The wrapper's own added time per call, measured inside a running node (see above)."""
    rng = random.Random(seed)
    workdir = Path(tempfile.mkdtemp(prefix="sil-bench-lg-in-"))
    added: list[float] = []
    try:
        with Guard(f"sqlite:///{workdir / 'in_node.db'}") as guard:
            bare = make_node(0)
            wrapped = guarded_node(bare, guard=guard)

            def body(state: S) -> S:
                arg: S = {"x": 0}
                for _ in range(rounds):
                    timings = {}
                    for name in rng.sample(["bare", "wrapped"], 2):
                        fn = bare if name == "bare" else wrapped
                        gc.collect()
                        gc.disable()
                        t0 = time.perf_counter()
                        for _ in range(calls):
                            fn(arg)
                        timings[name] = time.perf_counter() - t0
                        gc.enable()
                        guard.flush()
                    added.append((timings["wrapped"] - timings["bare"]) / calls * 1e6)
                return {}

            b = StateGraph(S)
            b.add_node("work", body)
            b.add_edge(START, "work")
            b.add_edge("work", END)
            b.compile().invoke({"x": 0}, {"configurable": {"thread_id": "t"}})
        return {"added_us_median": round(median(added), 3),
                "added_us_ci95": [round(x, 3) for x in median_ci95(added) or []] or None,
                "calls_per_block": calls, "rounds": rounds}
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def agent_runs(invokes: int, rounds: int, seed: int) -> dict[str, Any] | None:
    """GuardMiddleware's added time per agent run, paired against the bare agent."""
    try:
        from langchain.agents import create_agent
        from langchain_core.language_models import BaseChatModel
        from langchain_core.messages import AIMessage, ToolMessage
        from langchain_core.outputs import ChatGeneration, ChatResult
        from langchain_core.tools import tool
    except ImportError:
        return None
    from sil_langgraph import GuardMiddleware

    class FakeChat(BaseChatModel):
        @property
        def _llm_type(self) -> str:
            return "bench-fake"

        def bind_tools(self, tools: Any, **kwargs: Any) -> Any:
            return self

        def _generate(self, messages: Any, stop: Any = None, run_manager: Any = None, **kwargs: Any) -> Any:
            if isinstance(messages[-1], ToolMessage):
                msg = AIMessage(content="done")
            else:
                msg = AIMessage(content="", tool_calls=[{"name": "lookup", "args": {"q": "x"}, "id": "c1"}])
            return ChatResult(generations=[ChatGeneration(message=msg)])

    @tool
    def lookup(q: str) -> str:
        """Look up."""
        return q

    rng = random.Random(seed)
    workdir = Path(tempfile.mkdtemp(prefix="sil-bench-mw-"))
    try:
        adapter = DictConfigAdapter({"agent": {"system_prompt": "v1"}})
        plain = Guard(f"sqlite:///{workdir / 'mw.db'}", adapter=adapter)
        canary = Guard(f"sqlite:///{workdir / 'mw-canary.db'}", adapter=DictConfigAdapter({"agent": {"system_prompt": "v1"}}),
                       policy=RolloutPolicy(observe_only=True, ramp=(0.5,), horizon=10**9))
        canary.propose("agent", {"system_prompt": "v2"})
        guards = {"guard-middleware": plain, "guard-middleware-canary": canary}
        agents = {"bare": create_agent(FakeChat(), [lookup], system_prompt="v1")}
        for name, g in guards.items():
            agents[name] = create_agent(FakeChat(), [lookup], system_prompt="v1",
                                        middleware=[GuardMiddleware(g, "agent", check=lambda s: True)])
        inputs = {"messages": [("user", "hi")]}
        threads = [{"configurable": {"thread_id": f"t{i}"}} for i in range(invokes)]
        for name, agent in agents.items():
            for config in threads[: max(5, invokes // 5)]:
                agent.invoke(inputs, config)
        for g in guards.values():
            g.flush()
        pairs: dict[str, list[tuple[float, float]]] = {v: [] for v in guards}
        flushes: dict[str, list[float]] = {v: [] for v in guards}
        perf = time.perf_counter
        for r in range(rounds):
            order = list(guards)
            rng.shuffle(order)
            for variant in order:
                gc.collect()
                for config in threads:
                    first, second = (agents[variant], agents["bare"]) if rng.random() < 0.5 else \
                        (agents["bare"], agents[variant])
                    t0 = perf()
                    first.invoke(inputs, config)
                    t1 = perf()
                    second.invoke(inputs, config)
                    t2 = perf()
                    a, b = t1 - t0, t2 - t1
                    pairs[variant].append((a, b) if first is agents[variant] else (b, a))
                flushes[variant].append(_timed_flush(guards[variant]))
            log(f"middleware round {r + 1}/{rounds} done")
        result: dict[str, Any] = {"model_calls_per_run": 2, "tool_calls_per_run": 1}
        for variant, g in guards.items():
            added = [(t - bare) * 1e6 for t, bare in pairs[variant]]
            result[variant] = {
                "added_us_per_run_median": round(median(added), 3),
                "added_us_per_run_ci95": [round(x, 3) for x in median_ci95(added) or []] or None,
                "added_with_flush_us_per_run_median": round(median(added) + median(flushes[variant]) / invokes * 1e6, 3),
                "bare_run_us_median": round(median([bare * 1e6 for _, bare in pairs[variant]]), 3),
                "ratio_to_bare_median": round(median([t / bare for t, bare in pairs[variant]]), 4),
                "records_per_run": round(g.stats("agent").n / (len(pairs[variant]) + max(5, invokes // 5)), 3),
                "pairs": len(added),
            }
            g.close()
        return result
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _timed_flush(guard: Guard | None) -> float:
    if guard is None:
        return 0.0
    t0 = time.perf_counter()
    guard.flush()
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    parser.add_argument("--quick", action="store_true", help="fewer rounds (a smoke run, not a measurement)")
    parser.add_argument("--nodes", type=int, default=20)
    parser.add_argument("--invokes", type=int, default=None, help="pairs of invocations per variant and round")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    if args.nodes < 2:
        parser.error("--nodes must be at least 2")
    invokes = args.invokes or (20 if args.quick else 200)
    rounds = args.rounds or (3 if args.quick else 11)
    info = machine_info()
    info["langgraph"] = package_version("langgraph")
    info["langchain_core"] = package_version("langchain-core")
    log(f"{args.nodes}-node graph, {invokes} pairs of invocations per variant and round, {rounds} rounds")
    results = run(args.nodes, invokes, rounds, args.seed)
    results["in_node"] = in_node(500 if args.quick else 5000, rounds, args.seed)
    results["middleware"] = agent_runs(max(10, invokes // 4), rounds, args.seed)
    info["langchain"] = package_version("langchain")
    out = {
        "benchmark": "langgraph_overhead",
        "nodes": args.nodes,
        "pairs_per_round": invokes,
        "rounds": rounds,
        "target": TARGET_NOTE,
        "target_met": {"graph": results["guarded"]["added_us_median"] <= 2.0,
                       "in_node": results["in_node"]["added_us_median"] <= 2.0},
        "results": results,
        "machine": info,
        "loadavg_at_end": loadavg(),
    }
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    lg = results["langgraph"]
    print(f"LangGraph itself: {lg['per_node_us_median']:.1f} us per node "
          f"(one-node invoke {lg['one_node_invoke_us_median']:.0f} us, {args.nodes}-node invoke "
          f"{lg['bare_invoke_us_median']:.0f} us)")
    print(f"{'variant':<16} {'added us/node':>14} {'95% interval':>20} {'with flush':>11} {'ratio':>7}")
    for variant in ADDED:
        r = results[variant]
        ci = r["added_us_ci95"]
        ci_text = f"[{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "-"
        print(f"{variant:<16} {r['added_us_median']:>14.2f} {ci_text:>20} {r['added_with_flush_us_median']:>11.2f} "
              f"{r['ratio_to_bare_median']:>7.3f}")
    inn = results["in_node"]
    ci = inn["added_us_ci95"]
    print(f"{'in_node (wrapper)':<16} {inn['added_us_median']:>14.2f} "
          f"{(f'[{ci[0]:.2f}, {ci[1]:.2f}]' if ci else '-'):>20}")
    mw = results["middleware"]
    if mw:
        for variant in ("guard-middleware", "guard-middleware-canary"):
            r = mw[variant]
            ci = r["added_us_per_run_ci95"]
            print(f"{variant:<24} {r['added_us_per_run_median']:>9.1f} us/agent run "
                  f"{(f'[{ci[0]:.1f}, {ci[1]:.1f}]' if ci else '-')} (bare run {r['bare_run_us_median']:.0f} us, "
                  f"ratio {r['ratio_to_bare_median']:.3f}, {r['records_per_run']:.2f} records/run)")
    met = out["target_met"]
    print(f"{TARGET_NOTE}: graph {'met' if met['graph'] else 'NOT met'}, "
          f"in node {'met' if met['in_node'] else 'NOT met'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
