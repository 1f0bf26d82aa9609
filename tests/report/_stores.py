"""Stores for the report's tests: every kind of change a page must show."""

from __future__ import annotations

import random

from sil_core import DictConfigAdapter, Guard, RolloutPolicy, current_call

#: success probability and latency of each prompt; the cost of each call comes from the prompt too
PROMPTS = {"cite": (0.97, 0.010, 0.002), "terse": (0.55, 0.010, 0.002), "warm cite": (0.97, 0.010, 0.002),
           "verbose": (0.97, 0.010, 0.005)}
POLICY = RolloutPolicy(min_calls=30, ramp=(0.25, 0.5), step_calls=30, horizon=400, tripwire_consecutive=1000)


def _serve(guard: Guard, target: str, n: int, rng: random.Random, *, until_decided: bool) -> None:
    for i in range(n):
        user = f"user-{rng.randrange(10_000)}"
        with guard.call(target, key=user) as call:
            p, latency, cost = PROMPTS[call.config["prompt"]]
            call.metrics["cost_usd"] = cost * rng.uniform(0.9, 1.1)
        # the call ends as a success; a bad answer is judged by feedback, as a check node would
        if rng.random() >= p:
            guard.feedback(call.call_id, success=False)
        if until_decided and i % 20 == 19:
            guard.drain()
            if not guard.change(target).in_flight:
                return


def build(guard: Guard, *, reason_text: str | None = None) -> dict:
    """A rolled-back change, a promoted one, one rolled back on cost, one in flight, a pinned target."""
    rng = random.Random(7)
    adapter = guard.adapter
    for target in ("writer", "answer", "summarizer"):
        adapter.configs[target] = {"prompt": "cite"}
        guard.adopt(target, {"prompt": "cite"})
        _serve(guard, target, 120, rng, until_decided=False)
    guard.propose("writer", {"prompt": "terse"}, policy=POLICY)
    _serve(guard, "writer", 3000, rng, until_decided=True)
    guard.propose("writer", {"prompt": "warm cite"}, policy=POLICY)
    _serve(guard, "writer", 3000, rng, until_decided=True)
    guard.propose("answer", {"prompt": "verbose"}, policy=POLICY)
    _serve(guard, "answer", 3000, rng, until_decided=True)
    guard.propose("summarizer", {"prompt": "terse"}, policy=POLICY)
    _serve(guard, "summarizer", 10, rng, until_decided=False)
    version = guard.adopt("router", {"prompt": "cite"})
    guard.record("router", success=True, latency_s=0.02, version=version)
    guard.pin("router", version)
    if reason_text is not None:
        adapter.configs["odd"] = {"prompt": "cite"}
        guard.propose("odd", {"prompt": "cite <b>&amp;</b>"}, policy=POLICY)
        guard.rollback("odd", reason=reason_text)
    guard.drain()
    return {c.target + ":" + c.state: c for c in guard.changes()}


def make_guard(url: str) -> Guard:
    return Guard(url, adapter=DictConfigAdapter({}), policy=POLICY, flush_interval=0.02, refresh_interval=0.02)
