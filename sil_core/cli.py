"""The ``sil`` command: what an operator needs to see and do, on any store.

``status`` (per version, and per arm during a change), ``changes``, ``trail show|verify``,
``report`` (one self-contained HTML page),
and the actions ``promote``, ``rollback``, ``approve``, ``revert``, ``pin``, ``unpin``.
Every command takes ``--store`` and ``--json``. An action is taken here and now when this
process can act (the adapter is rebuilt from the store where it can be); the trail names
the person (``cli:$USER``). Exit codes: 0 done, 1 refused (the reason on stderr), 2 usage.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import textwrap
import time
from dataclasses import asdict
from datetime import datetime, timedelta, timezone
from typing import Any, Sequence
from urllib.parse import urlsplit, urlunsplit

from .aggregates import Stats, merge
from .errors import SilError
from .cli_actions import DONE, IN_FLIGHT_STATES, REFUSED, USAGE, Refused, act, actor
from .store import Store, default_store_source, open_store

__all__ = ("main", "masked_url")

def masked_url(url: str) -> str:
    """A store URL with its password (if any) replaced by ``***``."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
    except ValueError:
        return url.split("://", 1)[0] + "://***"
    user, _, host = parts.netloc.rpartition("@")
    return urlunsplit((parts.scheme, f"{user.split(':', 1)[0]}:***@{host}", parts.path, parts.query, parts.fragment))


def _since(text: str | None) -> float | None:
    """``--since``: ``30m``, ``24h``, ``7d`` ago, or an ISO 8601 time (naive means UTC)."""
    if text is None:
        return None
    units = {"m": 60, "h": 3600, "d": 86400}
    if text[-1:] in units and text[:-1].replace(".", "", 1).isdigit():
        return (datetime.now(timezone.utc) - timedelta(seconds=float(text[:-1]) * units[text[-1]])).timestamp()
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--since {text!r}: use 30m, 24h, 7d or an ISO 8601 time") from None
    return (moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)).timestamp()


# -- formatting ----------------------------------------------------------------------------------
def _fmt_latency(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f}us"
    if seconds < 1:
        return f"{seconds * 1e3:.1f}ms"
    return f"{seconds:.2f}s"


def _print_table(header: Sequence[str], rows: list[Sequence[Any]], indent: str = "") -> None:
    table = [tuple(header)] + [tuple("-" if c is None else str(c) for c in row) for row in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        print(indent + "  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())


def _stats_row(label: str, arm: str, stats: Stats) -> dict[str, Any]:
    return {"version": label, "arm": arm, "calls": stats.n, "successes": stats.successes, "failures": stats.failures,
            "success_rate": stats.success_rate, "success_ci": stats.success_ci, "p50_s": stats.p50_s,
            "p95_s": stats.p95_s, "retried": stats.retried, "interrupted": stats.interrupted,
            "cancelled": stats.cancelled,
            "metrics": {name: {"n": m.n, "mean": m.mean, "ci": m.ci} for name, m in stats.metrics.items()}}


def _fmt_metric(m: dict | None) -> str:
    """``mean ±half (n)`` of a metric (``-`` when a row has none)."""
    if not m or m["mean"] is None:
        return "-"
    half = f" ±{(m['ci'][1] - m['ci'][0]) / 2:.3g}" if m["ci"] and m["ci"][1] > m["ci"][0] else ""
    mean = m["mean"]
    shown = f"{mean:,.0f}" if abs(mean) >= 1e4 else f"{mean:.4g}"  # 33,240 tokens, not 3.324e+04
    return f"{shown}{half} ({m['n']})"


def _cells_row(target: str, label: str, cells: list) -> dict[str, Any]:
    return _stats_row(label, "", Stats.from_cell(target, merge(cells)))


# -- status --------------------------------------------------------------------------------------
def status_rows(guard: Any, *, since: float | None = None, all_versions: bool = False,
                targets: Sequence[str] = ()) -> list[dict]:
    """One entry per target: its totals, one row per version (the active one, and the two
    of its latest change; every version with ``all_versions``) and, during a change, one row
    per arm with the calls the change is judged on."""
    store = guard.store
    out = []
    known = set(store.targets()) | {c.target for c in guard.changes()}
    for target in targets or sorted(known):
        since_hour = None if since is None else int(since // 3600)
        cells = store.cells(target, since_hour=since_hour)
        total = Stats.from_cell(target, merge(cells.values()))
        view = guard.view(target, fresh=True)
        latest = guard.change(target)
        active = view.active
        by_version: dict[str, list] = {}
        for (version, _arm), cell in cells.items():
            by_version.setdefault(version, []).append(cell)
        # no head: versions recorded by hand (guard.record(version=...)) are all there is
        shown = set(by_version) if all_versions or active is None else {active, ""}
        if latest is not None and not all_versions:
            shown |= {latest.baseline_version, latest.candidate_version}
        order = [v["version"] for v in guard.versions(target)]
        versions = sorted((v for v in by_version if v in shown), key=lambda v: order.index(v) if v in order else -1)
        rows = []
        for version in versions:
            row = _cells_row(target, version or "(none)", by_version[version])
            row["active"] = active is not None and version == active
            rows.append(row)
        arms = None
        if latest is not None and latest.state in IN_FLIGHT_STATES:
            per_arm = guard.arms(target) or {}
            arms = [_stats_row(latest.baseline_version if arm == "baseline" else latest.candidate_version, arm, stats)
                    for arm, stats in per_arm.items()]
        out.append({
            "target": target, "calls": total.n, "successes": total.successes, "failures": total.failures,
            "success_rate": total.success_rate, "success_ci": total.success_ci, "p50_s": total.p50_s,
            "p95_s": total.p95_s, "active_version": active, "pinned": view.pinned,
            "pinned_by": (view.pin or {}).get("actor"),
            "change": None if latest is None else _change_dict(latest),
            "change_state": None if latest is None else latest.state,
            "versions": rows, "arms": arms,
        })
    return out


def worker_rows(store: Store, *, max_age_s: float = 3600.0) -> list[dict]:
    """The health every worker wrote to the store (``guard.health()``), seen within the hour."""
    now = time.time()
    rows = [{**value, "age_s": now - value.get("ts", 0.0)} for _, value, _ in store.kv_list("worker")]
    return sorted((r for r in rows if r["age_s"] <= max_age_s), key=lambda r: r["age_s"])


def _print_workers(workers: list[dict]) -> None:
    if not workers:
        return
    print()
    print("workers (their last health report):")
    _print_table(("worker", "seen", "pending", "written", "dropped", "set aside", "invalid", "store", "last write error"),
                 [(w["worker_id"], ("stopped " if w.get("stopped") else "") + f"{w['age_s']:.0f}s ago", w["pending"],
                   w["written"],
                   w["dropped"] + w["dropped_after_close"], w["set_aside"], sum((w.get("invalid_values") or {}).values()),
                   "ok" if w["store_reachable"] else "UNREACHABLE", w["last_write_error"] or "-") for w in workers],
                 indent="  ")


def _rate(row: dict) -> tuple[str, str]:
    rate = "-" if row["success_rate"] is None else f"{row['success_rate']:.1%}"
    ci = "-" if row["success_ci"] is None else f"[{row['success_ci'][0]:.1%}, {row['success_ci'][1]:.1%}]"
    return rate, ci


def _print_status(entries: list[dict], url: str, since: float | None, source: str = "--store") -> None:
    print(f"store: {masked_url(url)} (from {source})")
    if since is not None:
        print(f"calls since {datetime.fromtimestamp(since, timezone.utc):%Y-%m-%d %H:00} UTC (by hour)")
    if not entries:
        print("no calls recorded yet")
        return
    header = ("  version", "arm", "calls", "success", "95% interval", "p50", "p95", "retried", "interrupted")
    for e in entries:
        change = e["change"]
        line = f"{e['target']}: {e['calls']} calls, version {e['active_version'] or '-'}"
        if e["pinned"]:
            line += f" (pinned by {e['pinned_by'] or '?'})"
        line += " (* = active)" if any(r["active"] for r in e["versions"]) else ""
        if change is not None:
            line += f"; change {change['id']} {change['state']}"
            if change["state"] in IN_FLIGHT_STATES:
                line += f" at {change['weight']:.0%} ({change['baseline_version']} -> {change['candidate_version']})"
        print()
        print(line)
        rows = [("* " if r["active"] else "  ") + r["version"] for r in e["versions"]]
        table = [(label, "all", r["calls"], *_rate(r), _fmt_latency(r["p50_s"]), _fmt_latency(r["p95_s"]),
                  r["retried"], r["interrupted"]) for label, r in zip(rows, e["versions"])]
        table += [("  " + r["version"], r["arm"] + " (this change)", r["calls"], *_rate(r), _fmt_latency(r["p50_s"]),
                   _fmt_latency(r["p95_s"]), r["retried"], r["interrupted"]) for r in e["arms"] or ()]
        _print_table(header, table, indent="  ")
        every = [*e["versions"], *(e["arms"] or ())]
        names = sorted({name for r in every for name in r["metrics"]})
        if names:  # the metrics the target's calls carry: mean, 95 % half-width, values
            labels = [*rows, *("  " + r["version"] for r in e["arms"] or ())]
            arms = ["all"] * len(e["versions"]) + [r["arm"] + " (this change)" for r in e["arms"] or ()]
            _print_table(("  version", "arm", *names),
                         [(label, arm, *(_fmt_metric(r["metrics"].get(n)) for n in names))
                          for label, arm, r in zip(labels, arms, every)], indent="  ")


# -- changes and the trail -----------------------------------------------------------------------
def _change_dict(change: Any) -> dict[str, Any]:
    data = asdict(change)
    data["verdict"] = change.verdict.as_dict() if change.verdict is not None else None
    return data


def _print_changes(changes: list) -> None:
    if not changes:
        print("no changes yet")
        return
    for c in changes:
        created = datetime.fromtimestamp(c.created, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
        kind = c.mode if c.kind == "change" else c.kind
        print(f"{created}  {c.target}  {c.id}  {kind}  {c.state}  {c.baseline_version or '-'} -> "
              f"{c.candidate_version or '-'}  by {c.actor or '-'}")
        if c.reason:
            print(textwrap.fill(c.reason, width=100, initial_indent="    ", subsequent_indent="    "))


def _trail(store: Store, args: argparse.Namespace) -> int:
    from .trail import verify_trail

    if args.trail_command == "verify":
        report = verify_trail(store)
        if args.json:
            print(json.dumps({"ok": report.ok, "events": report.events, "head_seq": report.head_seq,
                              "head_hash": report.head_hash, "problems": report.problems}, indent=2))
        elif report.ok:
            print(f"trail OK: {report.events} events, head seq {report.head_seq} hash {report.head_hash}")
        else:
            count = len(report.problems)
            print(f"trail INVALID ({count} problem{'s' if count != 1 else ''}):")
            for problem in report.problems:
                print(f"  {problem}")
        return DONE if report.ok else REFUSED
    events = store.trail_read(target=args.target)
    if args.json:
        print(json.dumps(events, indent=2))
        return DONE
    for e in events:
        if e.get("corrupt") is not None:
            print(f"{'?':>5}  CORRUPT LINE: {str(e['corrupt'])[:100]}")
            continue
        data = e.get("data") or {}
        detail = data.get("reason") or (data.get("verdict") or {}).get("reason") or data.get("error") or ""
        print(f"{e['seq']:>5}  {e['ts'][:19]}  {e['type']:<20} {e.get('target') or '-':<20} "
              f"{e.get('actor') or '-':<18} {detail}".rstrip())
    return DONE


# -- the report -----------------------------------------------------------------------------------
def _report(store: Store, args: argparse.Namespace) -> int:
    from .guard import Guard
    from .report import write_report

    guard = Guard(store, worker_id=actor(), flush_interval=60)
    try:
        written = write_report(guard, args.out, targets=args.target or None, since=args.since,
                               store_label=masked_url(store.url))
    except OSError as exc:
        raise Refused(f"cannot write {args.out}: {exc}") from None
    finally:
        guard.close()
    if args.json:
        print(json.dumps({"store": masked_url(store.url), **written}, indent=2))
    else:
        print(f"wrote {written['path']} ({written['bytes'] / 1024:.1f} KiB, {written['changes']} changes, "
              f"{written['targets']} targets, {written['seconds']:.2f} s)")
    return DONE


# -- the parser ----------------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="sil", description="sil-guard: a regression guard for AI agents")
    parser.add_argument("--version", action="version", version=f"sil {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--store", default=None, help="store URL (default: $SIL_STORE, else Hermes' store when Hermes "
                        "is in use, else $XDG_DATA_HOME/sil-guard/sil.db; `sil status` says which and why)")
    common.add_argument("--json", action="store_true", help="print JSON instead of text")
    sub = parser.add_subparsers(dest="command")
    status = sub.add_parser("status", parents=[common], help="per target: calls, success, latency per version "
                            "and, during a change, per arm")
    status.add_argument("targets", nargs="*", metavar="TARGET", help="only these targets")
    status.add_argument("--since", type=_since, default=None, help="only calls since: 30m, 24h, 7d or ISO time")
    status.add_argument("--all-versions", action="store_true", help="a row for every version, not only the "
                        "active one and those of the latest change")
    changes = sub.add_parser("changes", parents=[common], help="every change with its state and whole reason, "
                             "rejected proposals included")
    changes.add_argument("target", nargs="?", default=None)
    trail = sub.add_parser("trail", help="the decision trail")
    trail_sub = trail.add_subparsers(dest="trail_command", required=True)
    trail_sub.add_parser("verify", parents=[common], help="check the hash chain (exit 1 if tampered)")
    show = trail_sub.add_parser("show", parents=[common], help="print the trail")
    show.add_argument("target", nargs="?", default=None)
    for name, text in (("rollback", "roll the target's change in flight back now"),
                       ("promote", "promote the target's change in flight now"),
                       ("approve", "start the target's change that waits for approval"),
                       ("unpin", "let changes of a pinned target be proposed again")):
        sub.add_parser(name, parents=[common], help=text).add_argument("target")
    revert = sub.add_parser("revert", parents=[common], help="restore an earlier version through the adapter "
                            "(undo the last promotion, or --to VERSION), recorded as a change")
    revert.add_argument("target")
    revert.add_argument("--to", default=None, metavar="VERSION")
    pin = sub.add_parser("pin", parents=[common], help="serve VERSION and refuse proposals until unpinned")
    pin.add_argument("target")
    pin.add_argument("version")
    report = sub.add_parser("report", parents=[common], help="write one self-contained HTML page: per target, "
                            "calls per version; per change, its curves, verdict, evidence and steps; the trail")
    report.add_argument("--target", action="append", default=[], metavar="TARGET",
                        help="only this target (repeat for several)")
    report.add_argument("--since", type=_since, default=None, help="only calls and changes since: 30m, 24h, 7d or "
                        "ISO time")
    report.add_argument("--out", default="sil-report.html", metavar="PATH", help="where to write the page "
                        "(default: sil-report.html)")
    sub.add_parser("hermes", help="Hermes skills: history SKILL, rollback SKILL [--to VERSION] "
                   "(needs sil-guard[hermes])", add_help=False)
    return parser


def _exists(url: str) -> bool:
    """Whether a file-based store is there already (a command must not create one by a typo)."""
    scheme, _, rest = url.partition("://")
    if scheme not in ("sqlite", "jsonl"):
        return True
    path = os.path.expanduser(rest[1:].partition("?")[0])
    return os.path.isfile(path) if scheme == "sqlite" else os.path.isdir(path)


def _run(store: Store, args: argparse.Namespace) -> int:
    from .guard import Guard

    if args.command == "status" and args.targets:
        known = set(store.targets()) | {key for key, _, _ in store.kv_list("head")}
        unknown = [t for t in args.targets if t not in known]
        if unknown:
            raise Refused(f"no calls or changes recorded for {', '.join(unknown)} in {masked_url(store.url)}")
    if args.command == "report" and args.target:
        known = set(store.targets()) | {key for key, _, _ in store.kv_list("head")}
        unknown = [t for t in args.target if t not in known]
        if unknown:
            raise Refused(f"no calls or changes recorded for {', '.join(unknown)} in {masked_url(store.url)}")
    if args.command == "trail":
        return _trail(store, args)
    if args.command == "report":
        return _report(store, args)
    if args.command not in ("status", "changes"):
        return act(store, args)
    guard = Guard(store, worker_id=actor(), flush_interval=60)
    try:
        if args.command == "status":
            entries = status_rows(guard, since=args.since, all_versions=args.all_versions, targets=args.targets)
            workers = worker_rows(store)
            if args.json:
                print(json.dumps({"store": masked_url(store.url), "store_source": args.store_source,
                                  "since": args.since, "targets": entries, "workers": workers}, indent=2))
            else:
                _print_status(entries, store.url, args.since, args.store_source)
                _print_workers(workers)
            return DONE
        listed = guard.changes(args.target)
        if args.json:
            print(json.dumps([_change_dict(c) for c in listed], indent=2, default=str))
        else:
            _print_changes(listed)
        return DONE
    finally:
        guard.close()


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["hermes"]:  # imported here only: sil_core never imports Hermes at import time
        try:
            from sil_hermes.cli import main as hermes_main
        except ImportError as exc:  # MissingExtra names the extra to install
            print(f"sil hermes: {exc}", file=sys.stderr)
            return USAGE
        return hermes_main(argv[1:])
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: --help and --version exit 0, a usage error 2
        return int(exc.code or 0)
    if args.command is None:
        parser.print_help()
        return USAGE
    url, args.store_source = (args.store, "--store") if args.store else default_store_source()
    fresh = not args.store and args.store_source != "$SIL_STORE" and not args.store_source.startswith("sil.store")
    if not fresh and not _exists(url):  # the default (XDG, or Hermes' sil/sil.db) may start empty
        print(f"sil: there is no store at {masked_url(url)} (from {args.store_source}; check --store, $SIL_STORE "
              "or sil.store in Hermes' config.yaml)", file=sys.stderr)
        return REFUSED
    try:
        store = open_store(None if fresh else url)
    except SilError as exc:
        print(f"sil: {exc}", file=sys.stderr)
        return REFUSED
    try:
        return _run(store, args)
    except BrokenPipeError:  # `sil status | head`: the reader has gone, which is fine
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - keep the interpreter's final flush quiet
        return DONE
    except (Refused, SilError) as exc:
        if getattr(args, "json", False):
            print(json.dumps({"ok": False, "command": args.command, "error": str(exc)}, indent=2))
        print(f"sil: {exc}", file=sys.stderr)
        return REFUSED
    finally:
        store.close()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
