#!/usr/bin/env python3
"""How much time the Hermes plugin's hooks add per hook call.

Hermes calls plugin hooks synchronously on the agent's (or a tool worker's) thread, with
no timeout in 0.19.0, so every microsecond a hook spends is added to a tool call or a
turn. Each hook is measured with the keyword arguments Hermes 0.19.0 passes:

* ``pre_tool_call``: a non-skill tool (the common case) and ``skill_view`` (the
  quarantine lookup);
* ``post_tool_call``: a non-skill tool that succeeded, and a ``skill_view`` load (a turn
  entry and a queued version check);
* ``pre_llm_call``: an ordinary user message, and a ``/skill`` invocation;
* ``on_session_end``: the end of a turn that loaded one skill (its record is queued);
* ``pre_tool_call[skill_manage]``, for information: the snapshot of the skill folder that
  must precede a write (disk reads on purpose, see the module docstring of the plugin).

Method (paired, interleaved): each round visits the cases in a shuffled order; a case
times a block of ``--calls`` calls of the hook next to a block of the same calls of a
no-op function with the same signature (which block goes first is random). The added time
per call is ``(hook block - no-op block) / calls``; the figure is the median over rounds
with a distribution-free 95 % interval. The plugin's background worker is drained between
blocks, outside the timing (its work is off the calling thread by design).

Run: ``python benchmarks/hermes_hooks.py [--json] [--quick]``
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import loadavg, log, machine_info, median, median_ci95, package_version  # noqa: E402

SKILL = """---
name: demo-skill
description: A demo skill.
---
# Demo
Answer briefly.
"""


def _noop(**kwargs: Any) -> None:
    return None


def _cases(plugin: Any, rt: Any, calls: int) -> dict[str, tuple[Callable[[], dict], Callable[..., Any]]]:
    """name -> (make the kwargs of one call, the hook)."""
    base = {"task_id": "t", "session_id": "s", "turn_id": "u", "api_request_id": "r", "middleware_trace": [],
            "telemetry_schema_version": "hermes.observer.v1"}
    counter = iter(range(10**9))
    slash = ('[IMPORTANT: The user has invoked the "demo-skill" skill, indicating they want you to follow its '
             "instructions. The full skill content is loaded below.]\n\n" + SKILL)

    def session_end() -> dict:
        sid = f"s{next(counter)}"
        rt.loaded(sid, "demo-skill", "skill_view", 3)  # set-up of the turn (not timed: see run_case)
        return {**base, "session_id": sid, "completed": True, "interrupted": False, "model": "m", "platform": "cli"}

    return {
        "pre_tool_call[terminal]": (lambda: {**base, "tool_name": "terminal", "args": {"command": "ls"},
                                             "tool_call_id": "c"}, plugin.pre_tool_call),
        "pre_tool_call[skill_view]": (lambda: {**base, "tool_name": "skill_view", "args": {"name": "demo-skill"},
                                               "tool_call_id": "c"}, plugin.pre_tool_call),
        "post_tool_call[terminal]": (lambda: {**base, "tool_name": "terminal", "args": {"command": "ls"},
                                              "result": '{"output": ""}', "tool_call_id": "c", "duration_ms": 3,
                                              "status": "ok", "error_type": None, "error_message": None},
                                     plugin.post_tool_call),
        "post_tool_call[skill_view]": (lambda: {**base, "tool_name": "skill_view", "args": {"name": "demo-skill"},
                                                "result": '{"success": true}', "tool_call_id": "c",
                                                "duration_ms": 3, "status": "ok", "error_type": None,
                                                "error_message": None}, plugin.post_tool_call),
        "pre_llm_call[plain]": (lambda: {**base, "user_message": "what is the weather?", "conversation_history": [],
                                         "is_first_turn": True, "model": "m", "platform": "cli", "sender_id": ""},
                                plugin.pre_llm_call),
        "pre_llm_call[slash]": (lambda: {**base, "user_message": slash, "conversation_history": [],
                                         "is_first_turn": True, "model": "m", "platform": "cli", "sender_id": ""},
                                plugin.pre_llm_call),
        "on_session_end": (session_end, plugin.on_session_end),
        "pre_tool_call[skill_manage]": (lambda: {**base, "tool_name": "skill_manage",
                                                 "args": {"name": "demo-skill", "action": "patch"},
                                                 "tool_call_id": f"c{next(counter)}"}, plugin.pre_tool_call),
    }


def _block(fn: Callable[..., Any], kwargs: list[dict]) -> float:
    t0 = time.perf_counter()
    for kw in kwargs:
        fn(**kw)
    return time.perf_counter() - t0


def run_case(make: Callable[[], dict], hook: Callable[..., Any], rt: Any, calls: int) -> float:
    """Added µs per call of one paired round."""
    hook_kwargs = [make() for _ in range(calls)]
    noop_kwargs = [dict(kw) for kw in hook_kwargs]
    rt.drain(30)
    first_hook = random.random() < 0.5
    if first_hook:
        t_hook = _block(hook, hook_kwargs)
        t_noop = _block(_noop, noop_kwargs)
    else:
        t_noop = _block(_noop, noop_kwargs)
        t_hook = _block(hook, hook_kwargs)
    rt.drain(30)
    with rt._lock:
        rt.turns.clear()
        rt.pending.clear()
    return (t_hook - t_noop) / calls * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print exactly one JSON object")
    parser.add_argument("--quick", action="store_true", help="fewer rounds (a smoke run)")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--calls", type=int, default=200, help="hook calls per timed block")
    args = parser.parse_args()
    rounds = args.rounds or (5 if args.quick else 31)

    tmp = Path(tempfile.mkdtemp(prefix="sil-hermes-bench-"))
    os.environ["HERMES_HOME"] = str(tmp / "home")
    (tmp / "home" / "skills" / "demo-skill").mkdir(parents=True)
    (tmp / "home" / "skills" / "demo-skill" / "SKILL.md").write_text(SKILL)
    (tmp / "home" / "config.yaml").write_text("skills:\n  creation_nudge_interval: 0\n")
    try:
        from sil_core import Guard
        from sil_hermes import SkillConfigAdapter, SkillGuard, plugin
        from sil_hermes._runtime import runtime

        guard = Guard(f"sqlite:///{tmp / 'sil.db'}")
        SkillGuard(guard, adapter=SkillConfigAdapter(tmp / "home"))
        rt = runtime()
        cases = _cases(plugin, rt, args.calls)
        samples: dict[str, list[float]] = {name: [] for name in cases}
        log(f"hermes hooks: {rounds} rounds x {len(cases)} cases x {args.calls} calls")
        for r in range(rounds):
            order = list(cases)
            random.shuffle(order)
            for name in order:
                make, hook = cases[name]
                samples[name].append(run_case(make, hook, rt, args.calls))
            if r % 10 == 9:
                log(f"  round {r + 1}/{rounds}")
        guard.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    results = {name: {"added_us_median": round(median(v), 3),
                      "added_us_ci95": [round(x, 3) for x in ci] if (ci := median_ci95(v)) else None,
                      "rounds": len(v)} for name, v in samples.items()}
    out = {"benchmark": "hermes_hooks", "calls_per_block": args.calls, "results": results,
           "hermes_agent": package_version("hermes-agent"), "machine": machine_info(), "loadavg_at_end": loadavg()}
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    print(f"{'hook':<30} {'added us/call':>14} {'95% interval':>20}")
    for name, r in results.items():
        ci = r["added_us_ci95"]
        print(f"{name:<30} {r['added_us_median']:>14.2f} {(f'[{ci[0]:.2f}, {ci[1]:.2f}]' if ci else '-'):>20}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
