"""The ``sil`` command: status, changes, the trail, manual promote and rollback."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence

from .aggregates import Stats, merge
from .store import Store, default_store_url, open_store

__all__ = ("main",)


def _fmt_latency(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f}us"
    if seconds < 1:
        return f"{seconds * 1e3:.1f}ms"
    return f"{seconds:.2f}s"


def status_rows(store: Store) -> list[dict]:
    """One row per target: calls, success rate with its interval, p50/p95, active version."""
    rows = []
    for target in store.targets():
        stats = Stats.from_cell(target, merge(store.cells(target).values()))
        latest = store.read_calls(target, limit=1)
        head = (store.kv_get("head", target) or ({}, 0))[0]
        change = store.kv_get("change", head["change_id"]) if head.get("change_id") else None
        rows.append({
            "target": target,
            "calls": stats.n,
            "successes": stats.successes,
            "failures": stats.failures,
            "success_rate": stats.success_rate,
            "success_ci": stats.success_ci,
            "p50_s": stats.p50_s,
            "p95_s": stats.p95_s,
            "active_version": head.get("active") or (latest[0].version if latest else None),
            "change_state": change[0]["state"] if change else None,
        })
    return rows


def _print_status(rows: list[dict], url: str) -> None:
    print(f"store: {url}")
    if not rows:
        print("no calls recorded yet")
        return
    header = ("target", "calls", "success", "95% interval", "p50", "p95", "version", "change")
    table = [header]
    for r in rows:
        rate = "-" if r["success_rate"] is None else f"{r['success_rate']:.1%}"
        ci = "-" if r["success_ci"] is None else f"[{r['success_ci'][0]:.1%}, {r['success_ci'][1]:.1%}]"
        table.append((r["target"], str(r["calls"]), rate, ci, _fmt_latency(r["p50_s"]),
                      _fmt_latency(r["p95_s"]), r["active_version"] or "-", r["change_state"] or "-"))
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())


def _print_table(header: tuple, rows: list[tuple]) -> None:
    table = [header] + [tuple("-" if c is None else str(c) for c in row) for row in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())


def _changes(store: Store, as_json: bool) -> int:
    from datetime import datetime, timezone

    rows = sorted((v for _, v, _ in store.kv_list("change")), key=lambda r: r["created"])
    if as_json:
        print(json.dumps(rows, indent=2, default=str))
        return 0
    if not rows:
        print("no changes yet")
        return 0
    _print_table(
        ("created (UTC)", "target", "change", "mode", "state", "from", "to", "reason"),
        [(datetime.fromtimestamp(r["created"], timezone.utc).strftime("%Y-%m-%d %H:%M:%S"), r["target"], r["id"],
          r["mode"], r["state"], r["baseline_version"], r["candidate_version"], (r.get("reason") or "")[:70])
         for r in rows],
    )
    return 0


def _trail(store: Store, args: argparse.Namespace) -> int:
    from .trail import verify_trail

    if args.trail_command == "verify":
        report = verify_trail(store)
        if report.ok:
            print(f"trail OK: {report.events} events, head seq {report.head_seq} hash {report.head_hash}")
            return 0
        print(f"trail INVALID ({len(report.problems)} problems):")
        for problem in report.problems:
            print(f"  {problem}")
        return 1
    events = store.trail_read(target=args.target)
    if args.json:
        print(json.dumps(events, indent=2))
        return 0
    for e in events:
        if e.get("corrupt") is not None:
            print(f"{'?':>5}  CORRUPT LINE: {str(e['corrupt'])[:100]}")
            continue
        data = e.get("data") or {}
        detail = data.get("reason") or (data.get("verdict") or {}).get("reason") or data.get("error") or ""
        print(f"{e['seq']:>5}  {e['ts'][:19]}  {e['type']:<20} {e.get('target') or '-':<20} "
              f"{e.get('actor') or '-':<18} {detail}".rstrip())
    return 0


def _act(store: Store, target: str, action: str) -> int:
    from .adapters import adapter_from_spec
    from .guard import Guard

    guard = Guard(store, worker_id="cli", flush_interval=60)
    try:
        row = guard._changes.latest_row(target)
        if action == "approve":
            return _approve(guard, target, row)
        if row is None or row["state"] not in ("canary", "paused", "restore_failed"):
            print(f"{target}: no change in flight")
            return 1
        needs_adapter = row["mode"] == "switch" if action == "rollback" else row["mode"] == "canary"
        adapter = adapter_from_spec(row.get("adapter_spec"))
        if needs_adapter and adapter is None:
            guard._changes.request(target, action, "cli")
            print(f"{target}: {action} requested; the next worker that holds the target's adapter will do it")
            return 0
        if adapter is not None:
            guard._changes.adapters[target] = adapter
        done = guard.rollback(target, actor="cli") if action == "rollback" else guard.promote(target, actor="cli")
        state = guard._changes.latest_row(target)["state"]
        print(f"{target}: {action} {'done' if done else 'not done'}; change {row['id']} is now {state}")
        return 0 if done else 1
    finally:
        guard.close()


def _approve(guard, target: str, row: dict | None) -> int:
    """Start a change that waits for approval (a switch-mode change needs its adapter)."""
    from .adapters import adapter_from_spec

    if row is None or row["state"] != "proposed":
        print(f"{target}: no change waiting for approval")
        return 1
    adapter = adapter_from_spec(row.get("adapter_spec"))
    if row["mode"] == "switch":
        if adapter is None:
            print(f"{target}: a switch-mode change is applied through its adapter, which cannot be rebuilt "
                  "here; approve it where the adapter lives (guard.approve)")
            return 1
        guard._changes.adapters[target] = adapter
    change = guard.approve(target, actor="cli")
    print(f"{target}: change {change.id} approved; it is now {change.state}")
    return 0 if change.state == "canary" else 1


def main(argv: Sequence[str] | None = None) -> int:
    from . import __version__

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["hermes"]:  # imported here only: sil_core never imports Hermes at import time
        try:
            from sil_hermes.cli import main as hermes_main
        except ImportError as exc:  # MissingExtra names the extra to install
            print(f"sil hermes: {exc}", file=sys.stderr)
            return 2
        return hermes_main(argv[1:])
    parser = argparse.ArgumentParser(prog="sil", description="sil-guard: a regression guard for AI agents")
    parser.add_argument("--version", action="version", version=f"sil {__version__}")
    store_help = f"store URL (default: $SIL_STORE or {default_store_url()})"
    sub = parser.add_subparsers(dest="command")
    status = sub.add_parser("status", help="one row per target: calls, success rate, latency, version")
    changes = sub.add_parser("changes", help="every config change with its state")
    trail = sub.add_parser("trail", help="the decision trail")
    trail_sub = trail.add_subparsers(dest="trail_command", required=True)
    trail_sub.add_parser("verify", help="check the hash chain").add_argument("--store", default=None, help=store_help)
    show = trail_sub.add_parser("show", help="print the trail")
    show.add_argument("target", nargs="?", default=None)
    show.add_argument("--store", default=None, help=store_help)
    show.add_argument("--json", action="store_true")
    for name, helptext in (("rollback", "roll the target's change back now"), ("promote", "promote the target's change now"),
                           ("approve", "start the target's change that waits for approval")):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("target")
        p.add_argument("--store", default=None, help=store_help)
    sub.add_parser("hermes", help="Hermes skills: history SKILL, rollback SKILL [--to VERSION] "
                   "(needs sil-guard[hermes])", add_help=False)
    for p in (status, changes):
        p.add_argument("--store", default=None, help=store_help)
        p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    store = open_store(args.store)
    try:
        if args.command == "status":
            rows = status_rows(store)
            if args.json:
                print(json.dumps({"store": store.url, "targets": rows}, indent=2))
            else:
                _print_status(rows, store.url)
            return 0
        if args.command == "changes":
            return _changes(store, args.json)
        if args.command == "trail":
            return _trail(store, args)
        return _act(store, args.target, args.command)
    finally:
        store.close()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
