#!/usr/bin/env python3
"""How much time sil-guard adds to one call, next to the seed (self-improving-loop 0.1.3).

Variants, all in one process and one run:

* ``bare``: the function alone (its added time is the noise floor, ~0);
* ``sil-sqlite-canary``: ``sil-sqlite`` with a change in flight (canary at 50 %, observe
  only): each call is routed to an arm, served its config, and judged in the background;
* ``sil-memory``, ``sil-jsonl``, ``sil-sqlite``, ``sil-postgresql``: the function under
  ``@guard.track("bench")`` of a ``Guard(url)`` on a fresh store (a temporary folder, or a
  fresh PostgreSQL schema ``sil_bench_<random>`` dropped afterwards; skipped with a note
  when PostgreSQL cannot be reached);
* ``sil-memory-otel``: ``sil-memory`` under ``sil_core.otel.instrument`` with the
  OpenTelemetry SDK as a service would run it: a ``TracerProvider`` with a
  ``BatchSpanProcessor`` whose exporter drops the spans (no network), a ``MeterProvider``
  with an ``InMemoryMetricReader``; every call makes a span, two metric points, and its
  attributes (skipped with a note without the ``[otel]`` extra);
* ``sil-memory-otel-noop``: the same with OpenTelemetry's no-op providers (the API without
  an SDK): what the observer costs when nothing records;
* ``otel-span-only``: no guard, the function inside ``tracer.start_as_current_span`` of the
  same SDK setup: what one OpenTelemetry span costs on this machine, for comparison;
* ``seed-0.1.3``: ``SelfImprovingLoop(data_dir=tmp)`` (default JSONL storage) and
  ``execute_with_improvement("bench", "bench", fn)`` with one agent id reused, i.e. the
  seed's steady-state success path (an fsync'd append per call, then a rollback check).

Workloads: ``0ms`` (returns a constant), ``1ms`` and ``10ms`` (``time.sleep``).

Method (paired, interleaved): each round visits every variant in a shuffled order. For
a variant it times a block of calls of the variant and a block of the bare function
right next to it (which one goes first is random), so both see the same machine state;
the per-call difference of the two blocks is that round's added time. After the variant's
block, ``guard.flush()`` writes what is still queued, outside the timed block, before the
bare block runs. Background writes that happen during a block (the writer wakes every
0.2 s, or at once when 1,000 records are queued) are not stopped: their cost, GIL
included, counts. ``added_us_median`` is the median over rounds, with a distribution-free
95 % interval; ``added_with_flush_us_median`` also charges the flush after the block to
the calls, i.e. the whole CPU cost of recording them (write-behind moves it off the
caller, it does not remove it). The guarded function never fails, so no failure-trigger
check runs.

Sleeping workloads are noisy: one ``time.sleep(0.001)`` varies by tens of microseconds,
so an added time of a few microseconds is within the noise there; read the interval.

Run: ``python benchmarks/overhead.py [--json] [--quick] [--pg-url URL]``
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import random
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    DEFAULT_PG_URL,
    loadavg,
    log,
    machine_info,
    median,
    median_ci95,
    pg_bench_schema,
    pg_drop_schema,
    pg_probe,
    pg_schema_url,
)

from sil_core import Guard  # noqa: E402

VARIANTS = ("bare", "sil-memory", "sil-memory-otel", "sil-memory-otel-noop", "sil-jsonl", "sil-sqlite",
            "sil-sqlite-canary", "sil-postgresql", "otel-span-only", "seed-0.1.3")
SIL_VARIANTS = tuple(v for v in VARIANTS if v.startswith("sil-"))
TARGET = "bench"

#: workload -> (sleep seconds, calls per block, rounds); the --quick plan is smaller
PLAN = {"0ms": (0.0, 2000, 21), "1ms": (0.001, 200, 21), "10ms": (0.010, 50, 15)}
QUICK_PLAN = {"0ms": (0.0, 500, 5), "1ms": (0.001, 50, 3), "10ms": (0.010, 10, 3)}

Loop = Callable[[int], None]


def make_workload(sleep_s: float) -> Callable[[], Any]:
    if sleep_s <= 0:
        return lambda: 42
    sleep = time.sleep
    return lambda: sleep(sleep_s)


def call_loop(call: Callable[[], Any]) -> Loop:
    def run(n: int) -> None:
        for _ in itertools.repeat(None, n):
            call()

    return run


@dataclass
class Subject:
    """One variant: how to wrap a workload, flush, and clean up."""

    name: str
    make_loop: Callable[[Callable[[], Any]], Loop]
    flush: Callable[[], Any] = lambda: None
    close: Callable[[], Any] = lambda: None
    info: dict[str, Any] = field(default_factory=dict)


def guard_subject(name: str, url: str, cleanup: Callable[[], Any] = lambda: None, *, canary: bool = False,
                  setup: Callable[[Guard], Any] = lambda guard: None) -> Subject:
    guard = Guard(url)
    setup(guard)
    if canary:  # a change in flight: every call is routed to an arm and judged in the background
        from sil_core import DictConfigAdapter, RolloutPolicy

        guard.propose(TARGET, {"prompt": "v2"}, adapter=DictConfigAdapter({TARGET: {"prompt": "v1"}}),
                      policy=RolloutPolicy(observe_only=True, horizon=10**9, ramp=(0.5,)))

    def make_loop(fn: Callable[[], Any]) -> Loop:
        return call_loop(guard.track(TARGET)(fn))

    def close() -> None:
        guard.close()
        cleanup()

    return Subject(name, make_loop, guard.flush, close, {"store": repr(guard.store)})


def otel_sdk() -> tuple[Any, Any]:
    """A tracer provider whose batch processor drops what it exports (an OTLP exporter minus
    the network) and a meter provider with an in-memory reader."""
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

    class DropExporter(SpanExporter):
        def export(self, spans):
            return SpanExportResult.SUCCESS

    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(BatchSpanProcessor(DropExporter()))
    return tracer_provider, MeterProvider(metric_readers=[InMemoryMetricReader()])


def span_only_subject() -> Subject:
    tracer_provider, meter_provider = otel_sdk()
    span = tracer_provider.get_tracer("bench").start_as_current_span

    def make_loop(fn: Callable[[], Any]) -> Loop:
        def spanned() -> Any:
            with span("bench"):
                return fn()

        return call_loop(spanned)

    def close() -> None:
        tracer_provider.shutdown()
        meter_provider.shutdown()

    return Subject("otel-span-only", make_loop, close=close, info={"otel": "sdk, one span per call, no guard"})


def otel_subject(name: str, *, sdk: bool) -> Subject:
    """``sil-memory`` instrumented with OpenTelemetry: the SDK exporting nowhere, or no-op providers."""
    from sil_core.otel import instrument

    if sdk:
        tracer_provider, meter_provider = otel_sdk()
    else:
        from opentelemetry.metrics import NoOpMeterProvider
        from opentelemetry.trace import NoOpTracerProvider

        tracer_provider, meter_provider = NoOpTracerProvider(), NoOpMeterProvider()
    subject = guard_subject(name, "memory://", setup=lambda guard: instrument(
        guard, tracer_provider=tracer_provider, meter_provider=meter_provider, decisions=("spans",)))
    close = subject.close

    def close_all() -> None:
        close()
        for provider in (tracer_provider, meter_provider):
            shutdown = getattr(provider, "shutdown", None)
            if shutdown is not None:
                shutdown()

    subject.close = close_all
    subject.info = {"store": subject.info["store"], "otel": "sdk, batch span processor dropping spans, "
                    "in-memory metric reader" if sdk else "no-op tracer and meter providers"}
    return subject


def seed_subject(data_dir: Path) -> Subject:
    from self_improving_loop import SelfImprovingLoop

    loop = SelfImprovingLoop(data_dir=str(data_dir))  # storage="jsonl", the default
    ewi = loop.execute_with_improvement

    def make_loop(fn: Callable[[], Any]) -> Loop:
        def run(n: int) -> None:
            for _ in itertools.repeat(None, n):
                ewi(TARGET, TARGET, fn)

        return run

    return Subject("seed-0.1.3", make_loop, info={"storage": loop.storage, "data_dir": str(data_dir)})


def open_subjects(tmp: Path, pg_url: str, only: set[str] | None, notes: list[str]) -> dict[str, Subject]:
    subjects: dict[str, Subject] = {"bare": Subject("bare", call_loop)}
    factories: dict[str, Callable[[], Subject]] = {
        "sil-memory": lambda: guard_subject("sil-memory", "memory://"),
        "sil-memory-otel": lambda: otel_subject("sil-memory-otel", sdk=True),
        "sil-memory-otel-noop": lambda: otel_subject("sil-memory-otel-noop", sdk=False),
        "otel-span-only": span_only_subject,
        "sil-jsonl": lambda: guard_subject("sil-jsonl", f"jsonl:///{tmp / 'jsonl'}"),
        "sil-sqlite": lambda: guard_subject("sil-sqlite", f"sqlite:///{tmp / 'sqlite.db'}"),
        "sil-sqlite-canary": lambda: guard_subject("sil-sqlite-canary", f"sqlite:///{tmp / 'canary.db'}",
                                                   canary=True),
        "seed-0.1.3": lambda: seed_subject(tmp / "seed"),
    }
    if only is None or "sil-postgresql" in only:
        reachable, detail = pg_probe(pg_url)
        if reachable:
            schema = pg_bench_schema()

            def open_pg() -> Subject:
                def drop() -> None:
                    error = pg_drop_schema(pg_url, schema)
                    if error:
                        notes.append(f"sil-postgresql: could not drop schema {schema}: {error}")

                try:
                    subject = guard_subject("sil-postgresql", pg_schema_url(pg_url, schema), drop)
                except BaseException:
                    drop()
                    raise
                subject.info["server_version"] = detail
                return subject

            factories["sil-postgresql"] = open_pg
        else:
            notes.append(f"sil-postgresql skipped: PostgreSQL unreachable at {pg_url} ({detail})")
    for name in VARIANTS[1:]:
        if name not in factories or (only is not None and name not in only):
            continue
        try:
            subjects[name] = factories[name]()
        except Exception as exc:  # a backend that cannot open is reported, not fatal
            notes.append(f"{name} skipped: could not open ({type(exc).__name__}: {exc})")
    return subjects


def timed(loop: Loop, n: int) -> float:
    t0 = time.perf_counter()
    loop(n)
    return time.perf_counter() - t0


def measure(subjects: dict[str, Subject], sleep_s: float, calls: int, rounds: int, rng: random.Random) -> dict:
    fn = make_workload(sleep_s)
    reference = call_loop(fn)
    loops = {name: s.make_loop(fn) for name, s in subjects.items()}
    # warm-up (not recorded): first calls open connections, create cells, start threads
    warm = max(10, calls // 10)
    reference(warm)
    for name, loop in loops.items():
        loop(warm)
        subjects[name].flush()
    added: dict[str, list[float]] = {name: [] for name in loops}
    per_call: dict[str, list[float]] = {name: [] for name in loops}
    with_flush: dict[str, list[float]] = {name: [] for name in loops}
    for _ in range(rounds):
        gc.collect()
        order = list(loops)
        rng.shuffle(order)
        for name in order:
            loop, flush = loops[name], subjects[name].flush
            if rng.random() < 0.5:
                t_ref = timed(reference, calls)
                t_var = timed(loop, calls)
                t_flush = timed(lambda _n: flush(), 0)
            else:
                t_var = timed(loop, calls)
                t_flush = timed(lambda _n: flush(), 0)
                t_ref = timed(reference, calls)
            added[name].append((t_var - t_ref) / calls * 1e6)
            with_flush[name].append((t_var + t_flush - t_ref) / calls * 1e6)
            per_call[name].append(t_var / calls * 1e6)
    out = {}
    for name in loops:
        ci = median_ci95(added[name])
        out[name] = {
            "added_us_median": round(median(added[name]), 3),
            "per_call_us_median": round(median(per_call[name]), 3),
            "added_us_ci95": None if ci is None else [round(x, 3) for x in ci],
            "added_with_flush_us_median": round(median(with_flush[name]), 3),
            "rounds": rounds,
            "calls_per_block": calls,
        }
    return out


def ratios(results: dict[str, dict]) -> dict[str, float | None]:
    seed = results.get("seed-0.1.3", {}).get("added_us_median")
    out: dict[str, float | None] = {}
    for name in SIL_VARIANTS:
        sil = results.get(name, {}).get("added_us_median")
        key = f"seed_over_{name.replace('-', '_')}"
        out[key] = round(seed / sil, 1) if seed is not None and sil is not None and sil > 0 else None
    return out


def otel_added(results: dict[str, dict]) -> dict[str, float | None]:
    """What instrumentation adds per call: each otel variant's added time minus ``sil-memory``'s
    (µs), and its ratio to ``sil-memory``'s added time."""
    plain = results.get("sil-memory", {}).get("added_us_median")
    out: dict[str, float | None] = {}  # one_span_us: a bare SDK span, no guard (otel-span-only)
    for name in ("sil-memory-otel", "sil-memory-otel-noop"):
        added = results.get(name, {}).get("added_us_median")
        key = name.removeprefix("sil-memory-").replace("-", "_")
        ok = added is not None and plain is not None
        out[f"{key}_extra_us"] = round(added - plain, 3) if ok else None
        out[f"{key}_over_plain"] = round(added / plain, 2) if ok and plain > 0 else None
    out["one_span_us"] = results.get("otel-span-only", {}).get("added_us_median")
    return out


def render(report: dict) -> str:
    lines = []
    for workload, results in report["workloads"].items():
        lines.append(f"\n{workload} workload")
        lines.append(f"  {'variant':<22}{'added µs':>11}{'95% CI':>22}{'per call µs':>14}{'+flush µs':>12}")
        for name in VARIANTS:
            r = results.get(name)
            if r is None:
                continue
            if r.get("skipped"):
                lines.append(f"  {name:<22}  skipped: {r['skipped']}")
                continue
            ci = r["added_us_ci95"]
            ci_text = f"[{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "n/a"
            lines.append(
                f"  {name:<22}{r['added_us_median']:>11.2f}{ci_text:>22}{r['per_call_us_median']:>14.2f}"
                f"{r['added_with_flush_us_median']:>12.2f}"
            )
        rat = report["ratios"].get(workload, {})
        shown = ", ".join(f"{k.removeprefix('seed_over_')}: {'n/a' if v is None else f'{v:g}x'}" for k, v in rat.items())
        lines.append(f"  seed added time / sil added time -> {shown}")
        o = report["otel"].get(workload, {})
        if o.get("otel_extra_us") is not None or o.get("otel_noop_extra_us") is not None:
            lines.append("  OpenTelemetry on sil-memory -> " + ", ".join(
                f"{k}: {'n/a' if v is None else f'{v:g}'}" for k, v in o.items()))
    t = report["targets"]
    lines.append(
        f"\ntargets (0ms): sil-sqlite added <= 5 µs: {t['sil_sqlite_added_le_5us']}; "
        f"seed >= 20x sil-sqlite: {t['seed_over_sil_sqlite_ge_20x']}"
    )
    for note in report["notes"]:
        lines.append(f"note: {note}")
    m = report["machine"]
    lines.append(
        f"machine: Python {m['python']} ({m['implementation']}), {m['cpu_count']} CPUs, {m['platform']}; "
        f"run took {report['duration_s']:.0f} s"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print exactly one JSON object")
    parser.add_argument("--quick", action="store_true", help="fewer calls and rounds (a smoke run)")
    parser.add_argument("--rounds", type=int, help="rounds per workload (overrides the plan)")
    parser.add_argument("--calls", type=int, help="calls per block (overrides the plan)")
    parser.add_argument("--workloads", help="comma-separated subset of 0ms,1ms,10ms")
    parser.add_argument("--variants", help=f"comma-separated subset of {','.join(VARIANTS[1:])}")
    parser.add_argument("--pg-url", default=DEFAULT_PG_URL, help="PostgreSQL server for sil-postgresql")
    parser.add_argument("--seed", type=int, default=12345, help="random seed of the shuffles")
    args = parser.parse_args(argv)

    plan = dict(QUICK_PLAN if args.quick else PLAN)
    if args.workloads:
        plan = {w: plan[w] for w in args.workloads.split(",")}
    if args.rounds:
        plan = {w: (s, c, args.rounds) for w, (s, c, _) in plan.items()}
    if args.calls:
        plan = {w: (s, args.calls, r) for w, (s, _, r) in plan.items()}
    only = set(args.variants.split(",")) if args.variants else None

    started = time.perf_counter()
    machine = machine_info()
    notes: list[str] = []
    rng = random.Random(args.seed)
    tmp = Path(tempfile.mkdtemp(prefix="sil-bench-overhead-"))
    subjects: dict[str, Subject] = {}
    try:
        subjects = open_subjects(tmp, args.pg_url, only, notes)
        log(f"variants: {', '.join(subjects)}")
        workloads: dict[str, dict] = {}
        for workload, (sleep_s, calls, rounds) in plan.items():
            log(f"{workload}: {rounds} rounds x {calls} calls per block ...")
            t0 = time.perf_counter()
            workloads[workload] = measure(subjects, sleep_s, calls, rounds, rng)
            log(f"{workload}: done in {time.perf_counter() - t0:.1f} s")
            for name in VARIANTS:
                if name not in subjects and (only is None or name in only):
                    reason = next((n for n in notes if n.startswith(f"{name} skipped: ")), "not run")
                    workloads[workload][name] = {"added_us_median": None, "per_call_us_median": None,
                                                 "skipped": reason.removeprefix(f"{name} skipped: ")}
    finally:
        for subject in subjects.values():
            try:
                subject.close()
            except Exception as exc:
                notes.append(f"{subject.name}: close failed ({type(exc).__name__}: {exc})")
        shutil.rmtree(tmp, ignore_errors=True)

    all_ratios = {w: ratios(r) for w, r in workloads.items()}
    zero = workloads.get("0ms", {})
    sqlite_added = zero.get("sil-sqlite", {}).get("added_us_median")
    seed_ratio = all_ratios.get("0ms", {}).get("seed_over_sil_sqlite")
    if any(w != "0ms" for w in workloads):
        notes.append("sleeping workloads: one sleep varies by tens of µs, so read added_us_ci95 (the bare "
                     "variant's interval is the noise floor); a ratio whose sil interval reaches 0 means little. "
                     "Background writes that land inside a block are charged to that block")
    otel_cost = {w: otel_added(r) for w, r in workloads.items()}
    report = {
        "workloads": workloads,
        "ratios": all_ratios,
        "otel": otel_cost,
        "targets": {
            "sil_sqlite_added_le_5us": None if sqlite_added is None else sqlite_added <= 5.0,
            "seed_over_sil_sqlite_ge_20x": None if seed_ratio is None else seed_ratio >= 20.0,
        },
        "variants": {name: s.info for name, s in subjects.items() if s.info},
        "method": "paired interleaved blocks; added = median over rounds of per-call (variant - bare)",
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
