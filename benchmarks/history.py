#!/usr/bin/env python3
"""What reading statistics costs as history grows: sil-guard's stores next to the seed.

For each store (``sqlite``, ``jsonl``, ``memory``, ``postgresql`` when reachable) one
store is grown incrementally to 1k, 10k, 100k and 1M call records, and at each size this
measures the median of individually timed calls (50 by default, after 3 warm-up calls) of

* ``store.stats(target)``: all-time statistics (``stats_us``);
* ``store.stats(target, since=now - 24 h)``: a windowed read (``stats_24h_us``);
* ``Guard._check_trigger(target)``: the failure-trigger check that runs after a batch
  with failures is written (``trigger_us``). It reads the cells of the last 24 h, the
  all-time cells and the cells of the analysis window; the guard's cooldown memory is
  cleared before each call so every call takes the full path.

The stores are filled directly with ``store.write(batch)`` in batches of 5,000
``CallRecord`` s of one target (unique ids, ~5 % failures, no contexts, log-normal
latencies, timestamps spread uniformly over the last 30 days so ~720 hourly cells
exist); ``fill_seconds`` is the cumulative time spent in ``write`` to reach each size.
The memory store stops at 100k (its default cap on raw records; aggregates cover every
call). A store whose projected fill time to the next size exceeds ``--fill-budget``
seconds (3 minutes by default) stops where it is, with a note.

The seed (self-improving-loop 0.1.3) is measured at 1k, 10k and 100k: its
``loop._calculate_metrics(agent_id)`` (the metrics behind its rollback and trigger
decisions) on a ``traces.jsonl`` pre-filled with traces in its own format
(``agent_id, task, success, duration_sec, error, context, timestamp`` with a naive local
ISO timestamp), the same data as above (``seed_metrics_us``).

Run: ``python benchmarks/history.py [--json] [--quick] [--sizes 1k,10k] [--pg-url URL]``
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    DEFAULT_PG_URL,
    loadavg,
    log,
    machine_info,
    median,
    pg_bench_schema,
    pg_drop_schema,
    pg_probe,
    pg_schema_url,
)

from sil_core import Guard  # noqa: E402
from sil_core.records import CallRecord, Outcome  # noqa: E402
from sil_core.store import Store, open_store  # noqa: E402

TARGET = "bench"
BATCH = 5_000
DAYS = 30
FAILURE_RATE = 0.05
SIZES = (1_000, 10_000, 100_000, 1_000_000)
MEMORY_MAX = 100_000
SEED_MAX = 100_000
STORES = ("sqlite", "jsonl", "memory", "postgresql")


def parse_size(text: str) -> int:
    text = text.strip().lower().replace("_", "")
    factor = {"k": 1_000, "m": 1_000_000}.get(text[-1:], 1)
    return int(float(text[:-1] if factor > 1 else text) * factor)


class Traffic:
    """The same deterministic stream of calls for every store and the seed."""

    def __init__(self, seed: int, now: float) -> None:
        self.rng = random.Random(seed)
        self.now = now

    def next(self) -> tuple[float, float, bool]:
        rng = self.rng
        ts = self.now - rng.random() * DAYS * 86400
        duration = rng.lognormvariate(math.log(0.8), 0.6)
        return ts, duration, rng.random() >= FAILURE_RATE

    def records(self, start: int, n: int) -> list[CallRecord]:
        out = []
        for i in range(start, start + n):
            ts, duration, ok = self.next()
            if ok:
                out.append(CallRecord(f"bench-{i:09d}", TARGET, ts, duration, Outcome.OK))
            else:
                out.append(CallRecord(f"bench-{i:09d}", TARGET, ts, duration, Outcome.ERROR, "RuntimeError", "boom"))
        return out

    def seed_lines(self, n: int) -> str:
        lines = []
        for _ in range(n):
            ts, duration, ok = self.next()
            lines.append(json.dumps({
                "agent_id": TARGET, "task": TARGET, "success": ok, "duration_sec": duration,
                "error": None if ok else "boom", "context": {},
                "timestamp": datetime.fromtimestamp(ts).isoformat(),  # naive local time, as the seed writes
            }, ensure_ascii=False))
        return "\n".join(lines) + "\n"


def time_us(fn: Callable[[], Any], reps: int, before: Callable[[], Any] | None = None, warmup: int = 3) -> float:
    """Median microseconds of ``reps`` individually timed calls (``before`` runs untimed)."""
    for _ in range(warmup):
        if before is not None:
            before()
        fn()
    samples = []
    perf = time.perf_counter_ns
    for _ in range(reps):
        if before is not None:
            before()
        t0 = perf()
        fn()
        samples.append((perf() - t0) / 1e3)
    return round(median(samples), 2)


def disk_mb(path: Path) -> float:
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.path.getsize(os.path.join(root, name))
            except OSError:
                pass
    return round(total / 1e6, 2)


def open_stores(names: list[str], tmp: Path, pg_url: str, notes: list[str], cleanups: list) -> dict[str, Store]:
    stores: dict[str, Store] = {}
    urls = {
        "sqlite": f"sqlite:///{tmp / 'sqlite.db'}",
        "jsonl": f"jsonl:///{tmp / 'jsonl'}",
        "memory": "memory://",
    }
    if "postgresql" in names:
        reachable, detail = pg_probe(pg_url)
        if reachable:
            schema = pg_bench_schema("sil_bench_hist")
            urls["postgresql"] = pg_schema_url(pg_url, schema)

            def drop(schema: str = schema) -> None:
                error = pg_drop_schema(pg_url, schema)
                if error:
                    notes.append(f"postgresql: could not drop schema {schema}: {error}")

            cleanups.append(drop)
            notes.append(f"postgresql: server {detail}, schema {schema} (dropped afterwards)")
        else:
            notes.append(f"postgresql skipped: unreachable at {pg_url} ({detail})")
    for name in names:
        if name not in urls:
            continue
        try:
            stores[name] = open_store(urls[name])
        except Exception as exc:
            notes.append(f"{name} skipped: could not open ({type(exc).__name__}: {exc})")
    return stores


def measure_store(store: Store, reps: int, now: float) -> dict[str, float]:
    guard = Guard(store)  # does not own the store; its writer thread never starts here
    try:
        result = {
            "stats": time_us(lambda: store.stats(TARGET), reps),
            "stats_24h": time_us(lambda: store.stats(TARGET, since=now - 86400), reps),
            "trigger": time_us(lambda: guard._check_trigger(TARGET), reps, before=guard._last_trigger.clear),
        }
    finally:
        guard.close()
    return result


def run_sil(args: argparse.Namespace, sizes: list[int], tmp: Path, now: float, notes: list[str]) -> dict:
    cleanups: list[Callable[[], None]] = []
    stores = open_stores(args.stores, tmp, args.pg_url, notes, cleanups)
    out: dict[str, dict] = {k: {} for k in ("stats_us", "stats_24h_us", "trigger_us", "fill_seconds", "disk_mb")}
    for name in stores:
        for k in out:
            out[k][name] = {}
    fill = {name: 0.0 for name in stores}
    traffic = Traffic(args.seed, now)
    written = 0
    try:
        for size in sizes:
            if not stores:
                break
            log(f"filling to {size:,} records: {', '.join(stores)} ...")
            while written < size:
                n = min(BATCH, size - written)
                batch = traffic.records(written, n)
                for name, store in list(stores.items()):
                    t0 = time.perf_counter()
                    try:
                        store.write(batch)
                    except Exception as exc:
                        notes.append(f"{name}: write failed at {written:,} records ({type(exc).__name__}: {exc}); stopped")
                        store.close()
                        del stores[name]
                        continue
                    fill[name] += time.perf_counter() - t0
                written += n
            for name, store in list(stores.items()):
                key = str(size)
                out["fill_seconds"][name][key] = round(fill[name], 2)
                n_seen = store.stats(TARGET).n
                if n_seen != size:
                    notes.append(f"{name}: stats(target).n is {n_seen:,} at {size:,} written records")
                m = measure_store(store, args.reps, now)
                out["stats_us"][name][key] = m["stats"]
                out["stats_24h_us"][name][key] = m["stats_24h"]
                out["trigger_us"][name][key] = m["trigger"]
                if name in ("sqlite", "jsonl"):
                    out["disk_mb"][name][key] = disk_mb(tmp / name)
                log(f"  {name:<10} {size:>9,}: stats {m['stats']:>9.1f} µs, stats 24h {m['stats_24h']:>9.1f} µs, "
                    f"trigger {m['trigger']:>9.1f} µs, fill {fill[name]:.1f} s")
                later = [s for s in sizes if s > size]
                if not later:
                    continue
                stop = None
                if name == "memory" and later[0] > MEMORY_MAX:
                    stop = f"memory: stopped at {size:,} (the memory store keeps at most {MEMORY_MAX:,} raw records)"
                else:
                    projected = fill[name] / size * later[0]
                    if projected > args.fill_budget:
                        stop = (f"{name}: stopped at {size:,}; filling to {later[0]:,} was projected to take "
                                f"{projected:.0f} s (> --fill-budget {args.fill_budget:g} s)")
                if stop:
                    notes.append(stop)
                    store.close()
                    del stores[name]
    finally:
        for store in stores.values():
            store.close()
        for cleanup in cleanups:
            cleanup()
    return out


def run_seed(args: argparse.Namespace, sizes: list[int], tmp: Path, now: float, notes: list[str]) -> tuple[dict, dict]:
    from self_improving_loop import SelfImprovingLoop

    data_dir = tmp / "seed"
    loop = SelfImprovingLoop(data_dir=str(data_dir))  # default storage: jsonl
    traffic = Traffic(args.seed, now)
    metrics: dict[str, float] = {}
    fill: dict[str, float] = {}
    written, elapsed = 0, 0.0
    for size in [s for s in sizes if s <= SEED_MAX]:
        t0 = time.perf_counter()
        with open(loop.traces_file, "a", encoding="utf-8") as f:
            while written < size:
                n = min(BATCH, size - written)
                f.write(traffic.seed_lines(n))
                written += n
        elapsed += time.perf_counter() - t0
        fill[str(size)] = round(elapsed, 2)
        total = loop._calculate_metrics(TARGET)["total_tasks"]
        metrics[str(size)] = time_us(lambda: loop._calculate_metrics(TARGET), args.reps, warmup=1)
        log(f"  {'seed-0.1.3':<10} {size:>9,}: _calculate_metrics {metrics[str(size)]:>11.1f} µs "
            f"(window holds {total:,} traces)")
    if any(s > SEED_MAX for s in sizes):
        notes.append(f"seed-0.1.3: measured up to {SEED_MAX:,} traces only (every call parses the whole file)")
    return metrics, fill


def render(report: dict) -> str:
    lines = []
    sizes = report["sizes"]
    head = "".join(f"{s:>12,}" for s in sizes)
    for title, key in (("store.stats(target), µs (median)", "stats_us"),
                       ("store.stats(target, since=24 h ago), µs", "stats_24h_us"),
                       ("failure-trigger check (Guard._check_trigger), µs", "trigger_us"),
                       ("cumulative fill time, s", "fill_seconds")):
        lines.append(f"\n{title}\n  {'store':<12}{head}")
        for name, row in report[key].items():
            cells = "".join(f"{row[str(s)]:>12,.1f}" if str(s) in row else f"{'-':>12}" for s in sizes)
            lines.append(f"  {name:<12}{cells}")
    seed = report["seed_metrics_us"]
    if seed:
        lines.append("\nseed-0.1.3 loop._calculate_metrics(agent_id), µs")
        lines.append(f"  {'':<12}{head}")
        lines.append(f"  {'seed-0.1.3':<12}" + "".join(f"{seed[str(s)]:>12,.1f}" if str(s) in seed else f"{'-':>12}" for s in sizes))
    for note in report["notes"]:
        lines.append(f"note: {note}")
    m = report["machine"]
    lines.append(f"machine: Python {m['python']}, {m['cpu_count']} CPUs, {m['platform']}; run took {report['duration_s']:.0f} s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print exactly one JSON object")
    parser.add_argument("--quick", action="store_true", help="stop at 100k records")
    parser.add_argument("--sizes", help="comma-separated record counts, e.g. 1k,10k,100k,1M")
    parser.add_argument("--stores", default=",".join(STORES), help=f"comma-separated subset of {','.join(STORES)}")
    parser.add_argument("--reps", type=int, default=50, help="timed calls per measurement (median)")
    parser.add_argument("--fill-budget", type=float, default=180.0,
                        help="stop a store when filling it to the next size is projected to take longer (s)")
    parser.add_argument("--no-seed", action="store_true", help="skip the seed comparison")
    parser.add_argument("--pg-url", default=DEFAULT_PG_URL, help="PostgreSQL server for the postgresql store")
    parser.add_argument("--seed", type=int, default=7, help="random seed of the generated traffic")
    args = parser.parse_args(argv)
    args.stores = [s for s in args.stores.split(",") if s]
    unknown = set(args.stores) - set(STORES)
    if unknown:
        parser.error(f"unknown stores: {', '.join(sorted(unknown))}")

    sizes = sorted({parse_size(s) for s in args.sizes.split(",")}) if args.sizes else list(SIZES)
    if args.quick:
        sizes = [s for s in sizes if s <= 100_000]

    started = time.perf_counter()
    machine = machine_info()
    notes: list[str] = []
    now = time.time()
    tmp = Path(tempfile.mkdtemp(prefix="sil-bench-history-"))
    try:
        sil = run_sil(args, sizes, tmp, now, notes)
        seed_metrics, seed_fill = ({}, {}) if args.no_seed else run_seed(args, sizes, tmp, now, notes)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if seed_fill:
        sil["fill_seconds"]["seed-0.1.3"] = seed_fill
    report = {
        "stats_us": sil["stats_us"],
        "trigger_us": sil["trigger_us"],
        "seed_metrics_us": seed_metrics,
        "fill_seconds": sil["fill_seconds"],
        "stats_24h_us": sil["stats_24h_us"],
        "disk_mb": sil["disk_mb"],
        "sizes": sizes,
        "reps": args.reps,
        "workload": {"targets": 1, "days": DAYS, "failure_rate": FAILURE_RATE, "batch": BATCH,
                     "latency": "lognormal(median 0.8 s, sigma 0.6)", "contexts": None},
        "quick": args.quick,
        "notes": notes,
        "machine": machine,
        "loadavg_at_end": loadavg(),
        "duration_s": round(time.perf_counter() - started, 1),
    }
    if args.json:
        print(json.dumps(report))
    else:
        print(render(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
