"""The ``sil`` command: ``sil status``, ``sil --version``."""

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
        rows.append({
            "target": target,
            "calls": stats.n,
            "successes": stats.successes,
            "failures": stats.failures,
            "success_rate": stats.success_rate,
            "success_ci": stats.success_ci,
            "p50_s": stats.p50_s,
            "p95_s": stats.p95_s,
            "active_version": latest[0].version if latest else None,
        })
    return rows


def _print_status(rows: list[dict], url: str) -> None:
    print(f"store: {url}")
    if not rows:
        print("no calls recorded yet")
        return
    header = ("target", "calls", "success", "95% interval", "p50", "p95", "version")
    table = [header]
    for r in rows:
        rate = "-" if r["success_rate"] is None else f"{r['success_rate']:.1%}"
        ci = "-" if r["success_ci"] is None else f"[{r['success_ci'][0]:.1%}, {r['success_ci'][1]:.1%}]"
        table.append((r["target"], str(r["calls"]), rate, ci, _fmt_latency(r["p50_s"]),
                      _fmt_latency(r["p95_s"]), r["active_version"] or "-"))
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())


def main(argv: Sequence[str] | None = None) -> int:
    from . import __version__

    parser = argparse.ArgumentParser(prog="sil", description="sil-guard: a regression guard for AI agents")
    parser.add_argument("--version", action="version", version=f"sil {__version__}")
    sub = parser.add_subparsers(dest="command")
    status = sub.add_parser("status", help="one row per target: calls, success rate, latency, version")
    status.add_argument("--store", default=None, help=f"store URL (default: $SIL_STORE or {default_store_url()})")
    status.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    store = open_store(args.store)
    try:
        rows = status_rows(store)
        if args.json:
            print(json.dumps({"store": store.url, "targets": rows}, indent=2))
        else:
            _print_status(rows, store.url)
    finally:
        store.close()
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
