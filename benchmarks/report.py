"""How big is ``sil report``'s page, and how long does it take, for a store with 100k calls and
20 changes?

Builds a SQLite store: 5 targets, 4 changes each (canary, judged as they go: some harmful,
rolled back; some neutral, promoted), 5,000 calls per change (the change's own and the calls
served after it), then writes the report a few times, each from a fresh open of the store.

Run: python benchmarks/report.py [--calls 100000] [--changes 20] [--rounds 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sil_core import DictConfigAdapter, Guard, RolloutPolicy  # noqa: E402
from sil_core.report import write_report  # noqa: E402

TARGETS = ("writer", "planner", "router", "summarizer", "critic")
POLICY = RolloutPolicy(min_calls=30, horizon=1000)


def build(path: Path, calls: int, changes: int, seed: int = 11) -> dict:
    rng = random.Random(seed)
    adapter = DictConfigAdapter({t: {"prompt": "v0", "harm": 0.0} for t in TARGETS})
    guard = Guard(f"sqlite:///{path}", adapter=adapter, policy=POLICY, flush_interval=0.05, refresh_interval=0.02)
    per_change = calls // changes
    recorded = 0
    for i in range(changes):
        target = TARGETS[i % len(TARGETS)]
        harm = rng.choice((0.0, 0.0, 0.15, 0.4))  # drop in success rate of the candidate
        guard.propose(target, {"prompt": f"v{i + 1}", "harm": harm})
        for j in range(per_change):
            version, arm, config = guard.route(target, key=f"u{rng.randrange(100_000)}")
            p = 0.95 - (config or {}).get("harm", 0.0)
            guard.record(target, success=rng.random() < p, latency_s=rng.lognormvariate(-1.0, 0.4),
                         version=version, arm=arm, metrics={"tokens_out": rng.randint(200, 400)})
            recorded += 1
            if j % 200 == 199:
                guard.drain()
                change = guard.change(target)
                if change is not None and change.in_flight and j > per_change * 0.8:
                    guard.promote(target)  # do not leave a change in flight for the next one
        guard.drain()
        change = guard.change(target)
        if change is not None and change.in_flight:
            guard.rollback(target, cooldown=False)
    guard.drain()
    states = [c.state for c in guard.changes()]
    guard.close()
    return {"calls": recorded, "changes": len(states),
            "states": {s: states.count(s) for s in sorted(set(states))}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=100_000)
    parser.add_argument("--changes", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="sil-bench-report-") as tmp:
        db = Path(tmp) / "sil.db"
        started = time.perf_counter()
        made = build(db, args.calls, args.changes)
        build_s = time.perf_counter() - started
        times, size = [], 0
        for _ in range(args.rounds):
            written = write_report(f"sqlite:///{db}", Path(tmp) / "report.html")
            times.append(written["seconds"])
            size = written["bytes"]
        result = {
            "store": {**made, "build_s": round(build_s, 1), "db_bytes": db.stat().st_size},
            "report_bytes": size,
            "render_s_median": round(statistics.median(times), 3),
            "render_s": [round(t, 3) for t in times],
            "python": sys.version.split()[0],
        }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        s = result["store"]
        print(f"store: {s['calls']:,} calls, {s['changes']} changes {s['states']} (built in {s['build_s']} s, "
              f"{s['db_bytes'] / 1e6:.1f} MB)")
        print(f"report: {result['report_bytes'] / 1024:.0f} KiB, written in {result['render_s_median']:.2f} s "
              f"(median of {args.rounds}: {result['render_s']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
